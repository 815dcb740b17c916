"""The run database itself: its layout, schema versions and migrations, connections, and error mapping.

Every thread has its own connection (core.store.connections: reopened when the file is moved,
deleted or replaced); every write is one short `BEGIN IMMEDIATE` transaction, so a second writer
waits (busy_timeout) instead of failing, and WAL lets readers go on meanwhile. sqlite3 errors leave
here only as one-line StoreErrors naming the file and the fix; a damaged file raises StoreDamaged,
whose fix is `kdlab store recover`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

from core.errors import OutputError
from core.folders import probe_folder
from core.lifecycle import RunStatus, one_line
from core.store.connections import Connections, Identity, file_identity, release, set_aside_orphans, swapping
from core.store.errors import (DB_NAME, NothingToRecover, RunNotFound, StoreDamaged,  # noqa: F401 - re-exported
                               StoreError, new_store_notice, recover_hint)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DEFAULT_DIR = "kdlab-runs"
ENV_VAR = "KDLAB_RUNS"
SOURCES = ("cli", "dashboard")

_STATUS_SQL = ", ".join(f"'{s.value}'" for s in RunStatus)
_SOURCE_SQL = ", ".join(f"'{s}'" for s in SOURCES)


def _runs_table(name: str) -> str:
    """The runs table of the current layout (under another name while a migration rebuilds it)."""
    return f"""CREATE TABLE {name} (
        id        TEXT PRIMARY KEY,
        name      TEXT NOT NULL,
        created   REAL NOT NULL,               -- unix seconds
        updated   REAL NOT NULL,
        status    TEXT NOT NULL CHECK (status IN ({_STATUS_SQL})),
        progress  REAL NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
        eta       REAL,                        -- seconds left; NULL = unknown
        error     TEXT,                        -- one-line message of a failed run
        config    TEXT NOT NULL,               -- the RunConfig as JSON
        results   TEXT,                        -- results.json as JSON; NULL before the first stage ends
        summary   TEXT,                        -- small JSON of headline numbers, for listings
        run_dir   TEXT NOT NULL,               -- absolute path of the run's output folder
        artifacts TEXT,                        -- JSON {{name: path relative to run_dir}}
        source    TEXT NOT NULL CHECK (source IN ({_SOURCE_SQL})),
        pid       INTEGER,                     -- owning process while queued or running
        host      TEXT,
        heartbeat REAL,                        -- owner's last sign of life, unix seconds
        started   REAL,                        -- start of the latest attempt
        finished  REAL,                        -- end of the latest attempt
        attempts  INTEGER NOT NULL DEFAULT 0,
        sweep_id  TEXT,                        -- the sweep this run is a trial of; NULL for a plain run
        trial     INTEGER                      -- its trial number in that sweep's study (latest attempt)
    )"""


EVENTS_TABLE = """CREATE TABLE events (
        run_id  TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        seq     INTEGER NOT NULL,              -- 1, 2, ... per run; continued when a run is resumed
        time    REAL NOT NULL,
        kind    TEXT NOT NULL,
        source  TEXT NOT NULL,
        step    INTEGER,
        epoch   INTEGER,
        metrics TEXT,                          -- JSON {split/metric: value}
        message TEXT,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID"""

SWEEPS_TABLE = f"""CREATE TABLE sweeps (
        id        TEXT PRIMARY KEY,            -- also the name of its folder
        name      TEXT NOT NULL,
        created   REAL NOT NULL,
        updated   REAL NOT NULL,
        status    TEXT NOT NULL CHECK (status IN ({_STATUS_SQL})),
        progress  REAL NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
        error     TEXT,
        config    TEXT NOT NULL,               -- the base RunConfig as JSON
        spec      TEXT NOT NULL,               -- the search as JSON (core.search.SearchSpec)
        sweep_dir TEXT NOT NULL,               -- absolute path: teachers, cache, trials/, sweep.json
        storage   TEXT NOT NULL,               -- Optuna RDB storage URL of its study
        study     TEXT NOT NULL,               -- Optuna study name
        best      TEXT,                        -- run id of the trial the pick rule chose
        summary   TEXT,                        -- small JSON: trials by state, best value, stage
        source    TEXT NOT NULL CHECK (source IN ({_SOURCE_SQL})),
        pid       INTEGER,
        host      TEXT,
        heartbeat REAL,
        started   REAL,
        finished  REAL,
        attempts  INTEGER NOT NULL DEFAULT 0
    )"""

_INDEXES = ["CREATE INDEX runs_by_created ON runs (created)",
            "CREATE INDEX runs_by_status ON runs (status)",
            "CREATE INDEX runs_by_sweep ON runs (sweep_id, trial)"]

# The layout of the current SCHEMA_VERSION, written into a new database.
SCHEMA = ["CREATE TABLE schema_version (version INTEGER NOT NULL)", _runs_table("runs"), *_INDEXES, EVENTS_TABLE,
          SWEEPS_TABLE]

Migration = Callable[[sqlite3.Connection], None]


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    """Sweeps and their trials: a sweeps table, runs.sweep_id/trial, and the status 'pruned'.

    SQLite cannot alter a CHECK, so runs is rebuilt. Foreign keys stay on inside a transaction, and
    dropping runs would cascade into its events: the events are copied aside first (a plain table),
    runs is rebuilt with no child left, and the events come back into a fresh events table.
    """
    conn.execute("CREATE TEMP TABLE events_copy AS SELECT * FROM events")
    conn.execute("DROP TABLE events")
    conn.execute(_runs_table("runs_v2"))
    conn.execute("INSERT INTO runs_v2 (id, name, created, updated, status, progress, eta, error, config, results, "
                 "summary, run_dir, artifacts, source, pid, host, heartbeat, started, finished, attempts) "
                 "SELECT id, name, created, updated, status, progress, eta, error, config, results, summary, "
                 "run_dir, artifacts, source, pid, host, heartbeat, started, finished, attempts FROM runs")
    conn.execute("DROP TABLE runs")
    conn.execute("ALTER TABLE runs_v2 RENAME TO runs")
    for statement in _INDEXES:
        conn.execute(statement)
    conn.execute(EVENTS_TABLE)
    conn.execute("INSERT INTO events SELECT * FROM temp.events_copy")
    conn.execute("DROP TABLE temp.events_copy")
    conn.execute(SWEEPS_TABLE)


# version -> function upgrading a database from that version to the next, run inside the opening
# transaction (so a failing one leaves the file as it was).
MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2}


def default_data_dir() -> Path:
    """`$KDLAB_RUNS` if set, else `./kdlab-runs`."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def new_run_id(name: str = "run") -> str:
    """A sortable, folder-safe id: `20250101-120000-<name>-<4 hex>`."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:32] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"


def dumps(obj: Any) -> str:
    """JSON text of a column value (anything not JSON-native as its str)."""
    return json.dumps(obj, default=str)


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:  # gone since it was looked at: the open creates a new one, not an empty one
        return None


# Notices about a store file (keyed by its path), shared by every store object of this process.
_NOTICES: dict[Path, str] = {}


class Database:
    """The SQLite file of a run store: per-thread connections, transactions, schema and migrations.

    `schema_version_target` and `migrations` are class attributes, so a later layout (or a test) can
    declare its version and the steps up from the older ones.
    """

    schema_version_target: ClassVar[int] = SCHEMA_VERSION
    migrations: ClassVar[dict[int, Migration]] = MIGRATIONS

    data_dir: Path
    db_path: Path
    busy_timeout: float

    @property
    def notice(self) -> str | None:
        """Something to tell the user about this store (see health()), e.g. that it started empty."""
        return _NOTICES.get(self.db_path)

    @notice.setter
    def notice(self, text: str | None) -> None:
        # Per file, not per store object: the page asking may hold another store than the one that saw it.
        if text is None:
            _NOTICES.pop(self.db_path, None)
        else:
            _NOTICES[self.db_path] = text

    def _init_database(self, data_dir: Path, busy_timeout: float) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / DB_NAME
        self.busy_timeout = busy_timeout    # seconds a writer waits for another writer's lock
        self.journal_mode = ""
        self._closed = False
        self._last_seen: Identity | None = None  # the file the latest (re)open found, so a change is logged once
        self._pool = Connections(self.db_path, self._connect)
        try:
            # Creates and writes a probe file, then removes what it made: a read-only mount fails here.
            probe_folder(self.data_dir, "--store")
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OutputError as err:
            raise StoreError(err.field, err.problem, err.fix) from None
        except OSError as err:
            raise StoreError("--store", f"cannot create the run store folder '{self.data_dir}' "
                             f"({err.strerror or err})", "choose a folder you can write to") from None
        if self.db_path.exists() and not self.db_path.is_file():
            raise StoreError("--store", f"'{self.db_path}' is not a file", "remove it or choose another folder")
        with swapping(), self._pool.gate.exclusive():
            self._reopen()

    # -- connections and errors ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        with self._guard():
            conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            # NORMAL is safe with WAL: a power cut may lose the last commits, never corrupt the file.
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, reopened first when the file was moved, deleted or replaced."""
        if self._closed:
            raise StoreError("store", f"the store '{self.db_path}' was closed", "open it again")
        pool = self._pool
        # Checked at the outermost call only: a thread inside the gate cannot wait for it exclusively.
        if pool.depth == 0 and pool.changed():
            with swapping(), pool.gate.exclusive():
                if pool.changed():  # another thread may have reopened it while this one waited
                    self._reopen()
        with pool.entered():
            yield pool.get()

    def _reopen(self) -> None:
        """(Re)open the file at db_path (gate and swap lock held): drop the old connections, check the schema.

        Every connection this process holds on a file no longer at the path is closed first, and what
        a moved or deleted file left at the path is renamed aside, so the new file shares nothing with it.
        """
        pool = self._pool
        current = file_identity(self.db_path)
        before = pool.identity or pool.previous  # the file this store last had open, if any
        changed = before is not None and current != before
        if changed:
            if current != self._last_seen:
                log.warning("the run store '%s' was %s while open; reopening it", self.db_path,
                            "moved or deleted" if current is None else "replaced")
            if pool.identity is not None:
                pool.fold_log()  # before the connections close: the moved file keeps its latest commits
        self._last_seen = current
        pool.drop_all()
        others = release(self.db_path, moved_only=True, keep=pool)  # other stores of this process on the old file
        orphans = set_aside_orphans(self.db_path) if current is None else []
        if current is None and (changed or orphans or others.closed):
            # This store, another one or another process had a file open here that has gone: a new one starts.
            self.notice = new_store_notice(self.data_dir, "was moved or deleted while kdlab had it open")
        empty = current is not None and _size(self.db_path) == 0
        try:
            self._open()
        except BaseException:
            pool.drop_all()  # a damaged file keeps no connection open: it may be moved aside next
            raise
        pool.opened()
        self._last_seen = pool.identity
        if empty:
            # SQLite takes a 0-byte file for a new database: say so, or the runs it held just vanish.
            self.notice = new_store_notice(self.data_dir, "was empty (0 bytes)")
            log.warning("%s", self.notice)

    def _damaged(self, err: Exception | str) -> StoreDamaged:
        self._pool.stale = True  # the next call reopens the file (it may have been moved aside by then)
        return StoreDamaged("store", f"'{self.db_path}' is damaged or is not a kdlab run database ({err})",
                            recover_hint(self.data_dir))

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound("run", f"no run '{run_id}' in the store '{self.data_dir}'",
                           "list the runs with `kdlab runs` (or the Runs page) and use one of their ids")

    def _require(self, run_id: str) -> None:
        if not self._read("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise self._not_found(run_id)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn sqlite3 errors into one-line StoreErrors that name the file and the fix."""
        try:
            yield
        except StoreError:
            raise
        except sqlite3.IntegrityError as err:
            raise StoreError("store", f"'{self.db_path}': {err}", "") from None
        except sqlite3.DatabaseError as err:
            if self._pool.moved():
                # Moved between this call's check and its statement (SQLite then says "disk I/O error"
                # or "readonly"): nothing was written, and the next call opens the file now there.
                raise StoreError("store", f"'{self.db_path}' was moved or replaced during this call ({err})",
                                 "try again") from None
            if not isinstance(err, sqlite3.OperationalError):
                raise self._damaged(err) from None
            text = str(err)
            if "locked" in text or "busy" in text:
                raise StoreError("store", f"'{self.db_path}' stayed locked by another writer for "
                                 f"{self.busy_timeout:.0f} s", "try again; if it lasts, look for a stuck "
                                 "kdlab process") from None
            if "unable to open" in text or "readonly" in text:
                raise StoreError("--store", f"'{self.db_path}' cannot be opened for writing ({text})",
                                 "check that the folder exists and is writable, or choose another "
                                 "--store") from None
            if "no such table" in text or "no such column" in text:
                raise self._damaged(err) from None
            raise StoreError("store", f"'{self.db_path}': {text}", "") from None

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        """One short write transaction (the write lock is taken at BEGIN, so it cannot deadlock)."""
        with self._guard():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as err:
                    # SQLite has already rolled back (e.g. after a disk error); the original error is raised.
                    log.debug("rollback of '%s' after an error failed too: %s", self.db_path, err)
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction on this thread's connection."""
        with self._use() as conn, self._transaction(conn):
            yield conn

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._use() as conn, self._guard():
            return conn.execute(sql, tuple(params)).fetchall()

    # -- schema -------------------------------------------------------------------------------

    def _open(self) -> None:
        """Check (or create, or migrate) the schema of the file at db_path; the gate is held."""
        conn = self._pool.get()
        with self._guard():
            tables = self._tables(conn)
        if tables and "schema_version" not in tables:
            # Refused before the journal mode is set: someone else's database is left exactly as it was.
            raise self._foreign()
        with self._guard():
            self.journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        target = self.schema_version_target
        with self._transaction(conn):
            tables = self._tables(conn)  # again inside the transaction: another process may have created it
            if not tables:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
                log.debug("created the run store '%s' (schema version %d)", self.db_path, target)
                return
            if "schema_version" not in tables:
                raise self._foreign()
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row and row[0] is not None else 0
            if version > target:
                raise StoreError("store", f"'{self.db_path}' was written by a newer kdlab (schema version "
                                 f"{version}; this kdlab reads version {target})",
                                 "upgrade kdlab, or use another --store folder")
            while version < target:
                migrate = self.migrations.get(version)
                if migrate is None:
                    raise StoreDamaged("store", f"'{self.db_path}' has schema version {version}, which this "
                                       f"kdlab (version {target}) cannot upgrade", recover_hint(self.data_dir))
                migrate(conn)
                version += 1
                conn.execute("UPDATE schema_version SET version = ?", (version,))
                log.info("upgraded the run store '%s' to schema version %d", self.db_path, version)
        log.debug("opened the run store '%s' (schema version %d, journal %s)", self.db_path, target,
                  self.journal_mode)

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _foreign(self) -> StoreDamaged:
        return StoreDamaged("store", f"'{self.db_path}' is an SQLite file but not a kdlab run database (no "
                            "schema_version table)", f"choose another --store folder, or {recover_hint(self.data_dir)}")

    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self._read("SELECT MAX(version) FROM schema_version")[0][0])

    def check(self, *, thorough: bool = False) -> None:
        """Raise the StoreError of the store's problem, if any (StoreDamaged for a damaged file).

        `thorough` also reads every page (PRAGMA quick_check), which finds damage deep in the
        events that a listing would only hit later; it costs a full read of the file.
        """
        self._read("SELECT COUNT(*) FROM runs")
        self._read("SELECT 1 FROM events LIMIT 1")
        self._read("SELECT 1 FROM sweeps LIMIT 1")
        self.schema_version()
        if thorough:
            problems = [r[0] for r in self._read("PRAGMA quick_check") if r[0] != "ok"]
            if problems:
                raise self._damaged(problems[0])

    def health(self, *, thorough: bool = False) -> str | None:
        """One line on what is wrong with the store, or worth knowing (it started empty); None if all is well.

        Never raises for a store problem, so a page can show the line instead of a traceback.
        """
        try:
            self.check(thorough=thorough)
        except StoreError as err:
            return one_line(err)
        return self.notice

    def close(self) -> None:
        """Close every connection this store opened."""
        self._closed = True
        pool = self._pool
        if pool.depth:  # closed from inside one of its own calls: nobody else may be holding the gate
            pool.drop_all()
            return
        with pool.gate.exclusive():
            pool.drop_all()
