"""The run database itself: its layout, schema versions and migrations, connections, and error mapping.

Every thread has its own connection; every write is one short `BEGIN IMMEDIATE` transaction, so a
second writer waits (busy_timeout) instead of failing, and WAL lets readers go on meanwhile. sqlite3
errors leave here only as one-line StoreErrors naming the file and the fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

from core.errors import KdlabError
from core.lifecycle import RunStatus

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_NAME = "kdlab.db"
DEFAULT_DIR = "kdlab-runs"
ENV_VAR = "KDLAB_RUNS"
SOURCES = ("cli", "dashboard")

_STATUS_SQL = ", ".join(f"'{s.value}'" for s in RunStatus)
_SOURCE_SQL = ", ".join(f"'{s}'" for s in SOURCES)

# The layout of the current SCHEMA_VERSION, written into a new database.
SCHEMA = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    f"""CREATE TABLE runs (
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
        attempts  INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX runs_by_created ON runs (created)",
    "CREATE INDEX runs_by_status ON runs (status)",
    """CREATE TABLE events (
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
    ) WITHOUT ROWID""",
]

Migration = Callable[[sqlite3.Connection], None]

# version -> function upgrading a database from that version to the next, run inside the opening
# transaction (so a failing one leaves the file as it was). Version 1 is the first layout: none yet.
MIGRATIONS: dict[int, Migration] = {}


class StoreError(KdlabError):
    """The run store cannot be opened or written, or a run in it is missing or damaged."""


class RunNotFound(StoreError):
    """No run with this id in the store."""


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

    def _init_database(self, data_dir: Path, busy_timeout: float) -> None:
        self.data_dir = data_dir
        self.db_path = data_dir / DB_NAME
        self.busy_timeout = busy_timeout    # seconds a writer waits for another writer's lock
        self._local = threading.local()
        self._conns: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._conns_lock = threading.Lock()
        self._closed = False
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError("--store", f"cannot create the run store folder '{self.data_dir}' "
                             f"({err.strerror or err})", "choose a folder you can write to") from None
        if self.db_path.exists() and not self.db_path.is_file():
            raise StoreError("--store", f"'{self.db_path}' is not a file", "remove it or choose another folder")
        self._open()

    # -- connections and errors ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        # NORMAL is safe with WAL: a power cut may lose the last commits, never corrupt the file.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError("store", f"the store '{self.db_path}' was closed", "open it again")
        with self._guard():
            conn = self._connect()
        with self._conns_lock:
            # Close the connections of threads that have ended (a dashboard starts a thread per rerun).
            for key, (thread, old) in list(self._conns.items()):
                if not thread.is_alive():
                    old.close()
                    del self._conns[key]
            self._conns[id(conn)] = (threading.current_thread(), conn)
        self._local.conn = conn
        return conn

    def _damaged(self, err: Exception) -> StoreError:
        return StoreError("store", f"'{self.db_path}' is damaged or is not a kdlab run database ({err})",
                          f"move it aside (mv '{self.db_path}' '{self.db_path}.bad'); kdlab then starts an "
                          f"empty store, and the run folders in '{self.data_dir}' are kept")

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
        except sqlite3.OperationalError as err:
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
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction (the write lock is taken at BEGIN, so it cannot deadlock)."""
        conn = self._conn()
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

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        conn = self._conn()
        with self._guard():
            cur = conn.execute(sql, tuple(params))
            return cur.fetchall()

    # -- schema -------------------------------------------------------------------------------

    def _open(self) -> None:
        conn = self._conn()
        with self._guard():
            self.journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        target = self.schema_version_target
        with self._tx() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
                log.debug("created the run store '%s' (schema version %d)", self.db_path, target)
                return
            if "schema_version" not in tables:
                raise StoreError("store", f"'{self.db_path}' is an SQLite file but not a kdlab run database "
                                 "(no schema_version table)", "move it aside or choose another --store "
                                 "folder")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row and row[0] is not None else 0
            if version > target:
                raise StoreError("store", f"'{self.db_path}' was written by a newer kdlab (schema version "
                                 f"{version}; this kdlab reads version {target})",
                                 "upgrade kdlab, or use another --store folder")
            while version < target:
                migrate = self.migrations.get(version)
                if migrate is None:
                    raise StoreError("store", f"'{self.db_path}' has schema version {version}, which this "
                                     f"kdlab (version {target}) cannot upgrade",
                                     f"move it aside (mv '{self.db_path}' '{self.db_path}.old') to start "
                                     "an empty store")
                migrate(conn)
                version += 1
                conn.execute("UPDATE schema_version SET version = ?", (version,))
                log.info("upgraded the run store '%s' to schema version %d", self.db_path, version)
        log.debug("opened the run store '%s' (schema version %d, journal %s)", self.db_path, target,
                  self.journal_mode)

    def schema_version(self) -> int:
        """The schema version of the open database."""
        return int(self._read("SELECT MAX(version) FROM schema_version")[0][0])

    def close(self) -> None:
        """Close every connection this store opened."""
        self._closed = True
        with self._conns_lock:
            for _, conn in self._conns.values():
                try:
                    conn.close()
                except sqlite3.Error as err:
                    log.debug("closing a connection to '%s' failed (%s); the store is closed anyway",
                              self.db_path, err)
            self._conns.clear()
        self._local = threading.local()
