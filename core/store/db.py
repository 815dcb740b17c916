"""The run store: one SQLite database (WAL) beside one folder per run, shared by the CLI and the dashboard.

A data directory (default `./kdlab-runs`, or `$KDLAB_RUNS`) holds:

  kdlab.db     runs, their events and the schema version
  <run_id>/    the run's output folder (config.yaml, events.jsonl, results.json, checkpoints)

It is written by background worker threads and read by many dashboard sessions at once: WAL lets
readers go on while a writer commits; each thread has its own connection; every write is one short
`BEGIN IMMEDIATE` transaction, so a second writer waits (busy_timeout) instead of failing.

A run marked queued/running whose owning process is gone (pid not alive on this host, or no heartbeat
for `stale_after` seconds) is marked `interrupted` when the store is opened; it keeps its events and
can be resumed in the same folder, where the per-epoch checkpoints make it continue.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from core.errors import KdlabError
from core.store.frames import downsample

if TYPE_CHECKING:  # pandas is imported where a frame is built: `kdlab presets` need not pay for it
    import pandas as pd

SCHEMA_VERSION = 1
DB_NAME = "kdlab.db"
DEFAULT_DIR = "kdlab-runs"
ENV_VAR = "KDLAB_RUNS"

RUN_STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled", "interrupted")
RESUMABLE = ("interrupted", "failed", "cancelled")
SOURCES = ("cli", "dashboard")

_STATUS_SQL = ", ".join(f"'{s}'" for s in RUN_STATUSES)
_SOURCE_SQL = ", ".join(f"'{s}'" for s in SOURCES)

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

# version -> function upgrading a database from that version to the next, inside one transaction.
MIGRATIONS: dict[int, Any] = {}

# seq is assigned inside the insert, so writers in several threads or processes never collide.
_INSERT_EVENT = ("INSERT INTO events (run_id, seq, time, kind, source, step, epoch, metrics, message) "
                 "SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ? FROM events WHERE run_id = ?")

_RUN_COLUMNS = ("id", "name", "created", "updated", "status", "progress", "eta", "error", "config",
                "results", "summary", "run_dir", "artifacts", "source", "pid", "host", "heartbeat",
                "started", "finished", "attempts")
_LIST_COLUMNS = ("id", "name", "status", "progress", "eta", "created", "updated", "started", "finished",
                 "source", "error", "run_dir", "attempts", "summary")
SUMMARY_KEYS = ("kd_test_acc", "scratch_test_acc", "ensemble_test_acc", "best_teacher_test_acc",
                "gain_recovery")


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


def summarize(results: Mapping[str, Any] | None, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Headline numbers of a results dict (any stage), for run listings."""
    out: dict[str, Any] = {}
    if not results:
        return out
    teachers = results.get("teachers") or []
    if teachers:
        out["best_teacher_test_acc"] = max(t.get("test_acc", float("nan")) for t in teachers)
    scheme = (results.get("summary") or {}).get("target_scheme") or \
        ((config or {}).get("ensemble") or {}).get("scheme")
    for e in results.get("ensembles") or []:
        if e.get("scheme") == scheme and "test_acc" in e:
            out["ensemble_test_acc"] = e["test_acc"]
    students = results.get("students") or []
    scratch = [s["test_acc"] for s in students if s.get("kind") == "scratch"]
    kd_rounds = [s.get("round") or 1 for s in students if s.get("kind") == "kd"]
    if scratch:
        out["scratch_test_acc"] = sum(scratch) / len(scratch)
    if kd_rounds:
        last = max(kd_rounds)
        kd = [s["test_acc"] for s in students if s.get("kind") == "kd" and (s.get("round") or 1) == last]
        out["kd_test_acc"] = sum(kd) / len(kd)
    recovery = ((results.get("summary") or {}).get("gain_recovery") or {}).get("of_means")
    if recovery is not None:
        out["gain_recovery"] = recovery
    return out


def _artifacts(run_dir: Path, results: Mapping[str, Any] | None) -> dict[str, Any]:
    """Paths (relative to the run folder) of the files a run left behind."""
    found: dict[str, Any] = {}
    for key, name in (("config", "config.yaml"), ("events", "events.jsonl"), ("results", "results.json")):
        if (run_dir / name).is_file():
            found[key] = name
    for key in ("teachers", "students"):
        weights = [e["weights"] for e in (results or {}).get(key) or [] if e.get("weights")]
        if weights:
            found[key] = weights
    return found


@dataclass
class RunRecord:
    """One row of the runs table, JSON columns decoded."""

    id: str
    name: str
    status: str
    created: float
    updated: float
    progress: float
    eta: float | None
    error: str | None
    config: dict[str, Any]
    results: dict[str, Any] | None
    summary: dict[str, Any]
    run_dir: Path
    artifacts: dict[str, Any]
    source: str
    pid: int | None = None
    host: str | None = None
    heartbeat: float | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dir_exists(self) -> bool:
        return self.run_dir.is_dir()

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"] = str(self.run_dir)
        return d


class RunStore:
    """Runs, their events and artifact paths in `<data_dir>/kdlab.db`; safe from many threads."""

    def __init__(self, data_dir: str | Path | None = None, *, stale_after: float = 60.0,
                 busy_timeout: float = 30.0, reap: bool = True) -> None:
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser().absolute()
        self.db_path = self.data_dir / DB_NAME
        self.stale_after = stale_after      # seconds without a heartbeat before a run counts as dead
        self.busy_timeout = busy_timeout    # seconds a writer waits for another writer's lock
        self.host = socket.gethostname()
        self._local = threading.local()
        self._conns: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._conns_lock = threading.Lock()
        self._last_reap = 0.0
        self._closed = False
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError("--store", f"cannot create the run store folder '{self.data_dir}' "
                             f"({err.strerror or err})", "choose a folder you can write to") from None
        if self.db_path.exists() and not self.db_path.is_file():
            raise StoreError("--store", f"'{self.db_path}' is not a file", "remove it or choose another folder")
        self._open()
        if reap:
            self.reap()

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
                except sqlite3.Error:
                    pass
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        conn = self._conn()
        with self._guard():
            cur = conn.execute(sql, tuple(params))
            return cur.fetchall()

    def _open(self) -> None:
        conn = self._conn()
        with self._guard():
            self.journal_mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        with self._tx() as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                for statement in SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                return
            if "schema_version" not in tables:
                raise StoreError("store", f"'{self.db_path}' is an SQLite file but not a kdlab run database "
                                 "(no schema_version table)", f"move it aside or choose another --store "
                                 "folder")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0] if row and row[0] is not None else 0
            if version > SCHEMA_VERSION:
                raise StoreError("store", f"'{self.db_path}' was written by a newer kdlab (schema version "
                                 f"{version}; this kdlab reads version {SCHEMA_VERSION})",
                                 "upgrade kdlab, or use another --store folder")
            while version < SCHEMA_VERSION:
                migrate = MIGRATIONS.get(version)
                if migrate is None:
                    raise StoreError("store", f"'{self.db_path}' has schema version {version}, which this "
                                     f"kdlab (version {SCHEMA_VERSION}) cannot upgrade",
                                     f"move it aside (mv '{self.db_path}' '{self.db_path}.old') to start "
                                     "an empty store")
                migrate(conn)
                version += 1
                conn.execute("UPDATE schema_version SET version = ?", (version,))

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
                except sqlite3.Error:
                    pass
            self._conns.clear()
        self._local = threading.local()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore('{self.data_dir}')"

    # -- writing runs ---------------------------------------------------------------------------

    def run_dir_for(self, run_id: str) -> Path:
        """Where a store-managed run writes its files."""
        return self.data_dir / run_id

    def create_run(self, config: Any, *, name: str | None = None, source: str = "dashboard",
                   status: str = "queued", run_id: str | None = None,
                   run_dir: str | Path | None = None) -> str:
        """Record a new run (queued, or running when started right away) owned by this process."""
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if source not in SOURCES:
            raise StoreError("source", f"unknown run source '{source}'", f"use one of {', '.join(SOURCES)}")
        if status not in ACTIVE:
            raise StoreError("status", f"a new run cannot start as '{status}'", "use queued or running")
        name = name or str(cfg.get("name") or "run")
        run_id = run_id or new_run_id(name)
        folder = Path(run_dir).expanduser().absolute() if run_dir is not None else self.run_dir_for(run_id)
        now = time.time()
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise StoreError("run", f"a run with id '{run_id}' already exists", "pick another id")
            conn.execute(
                "INSERT INTO runs (id, name, created, updated, status, progress, config, run_dir, source, "
                "pid, host, heartbeat, started, attempts) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, now, now, status, _dumps(cfg), str(folder), source, os.getpid(), self.host,
                 now, now if status == "running" else None, 1 if status == "running" else 0))
        return run_id

    def _update(self, run_id: str, sql: str, params: tuple[Any, ...]) -> None:
        with self._tx() as conn:
            cur = conn.execute(f"UPDATE runs SET {sql}, updated = ? WHERE id = ?", (*params, time.time(), run_id))
            if cur.rowcount == 0:
                raise self._not_found(run_id)

    def start_run(self, run_id: str) -> None:
        """Mark a run running, owned by this process (a new attempt)."""
        now = time.time()
        self._update(run_id, "status = 'running', pid = ?, host = ?, heartbeat = ?, started = ?, "
                     "finished = NULL, error = NULL, eta = NULL, attempts = attempts + 1",
                     (os.getpid(), self.host, now, now))

    def requeue(self, run_id: str) -> RunRecord:
        """Put an interrupted, failed or cancelled run back to queued, owned by this process."""
        record = self.get_run(run_id)
        if record.status not in RESUMABLE:
            what = "is still " + record.status if record.status in ACTIVE else "is done"
            raise StoreError(f"run {run_id}", f"cannot be resumed: it {what}",
                             "resume only interrupted, failed or cancelled runs")
        with self._tx() as conn:
            cur = conn.execute("UPDATE runs SET status = 'queued', pid = ?, host = ?, heartbeat = ?, error = NULL, "
                               "eta = NULL, finished = NULL, updated = ? WHERE id = ? AND status = ?",
                               (os.getpid(), self.host, time.time(), time.time(), run_id, record.status))
            if cur.rowcount == 0:
                raise StoreError(f"run {run_id}", "changed while being resumed", "try again")
        return self.get_run(run_id)

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run's status (and error message); a finished status also stamps `finished`."""
        if status not in RUN_STATUSES:
            raise StoreError("status", f"unknown status '{status}'", f"use one of {', '.join(RUN_STATUSES)}")
        finished = time.time() if status in FINISHED else None
        self._update(run_id, "status = ?, error = ?, finished = COALESCE(?, finished)", (status, error, finished))

    def update_progress(self, run_id: str, progress: float, eta: float | None = None) -> None:
        """Progress in 0..1 and the estimated seconds left (None = unknown)."""
        self._update(run_id, "progress = ?, eta = ?, heartbeat = ?",
                     (min(max(float(progress), 0.0), 1.0), eta, time.time()))

    def set_results(self, run_id: str, results: Mapping[str, Any]) -> None:
        """Store a run's results (any stage) and its headline summary."""
        record = self.get_run(run_id)
        self._update(run_id, "results = ?, summary = ?",
                     (_dumps(results), _dumps(summarize(results, record.config))))

    def finish_run(self, run_id: str, status: str, *, results: Mapping[str, Any] | None = None,
                   error: str | None = None) -> None:
        """End an attempt: final status, error, results (read from results.json when not given), artifacts."""
        if status not in FINISHED:
            raise StoreError("status", f"'{status}' is not a final status", f"use one of {', '.join(FINISHED)}")
        record = self.get_run(run_id)
        if results is None:
            results = self._read_results_file(record.run_dir)
        results = results if results is not None else record.results
        summary = summarize(results, record.config) if results else record.summary
        artifacts = _artifacts(record.run_dir, results) if record.dir_exists else record.artifacts
        now = time.time()
        progress = 1.0 if status == "done" else record.progress
        eta = 0.0 if status == "done" else None
        self._update(run_id, "status = ?, error = ?, results = ?, summary = ?, artifacts = ?, finished = ?, "
                     "progress = ?, eta = ?, heartbeat = ?",
                     (status, error, _dumps(results) if results is not None else None, _dumps(summary),
                      _dumps(artifacts), now, progress, eta, now))

    @staticmethod
    def _read_results_file(run_dir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((run_dir / "results.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def sync_results(self, run_id: str, run_dir: Path) -> bool:
        """Copy `run_dir/results.json` into the store, if it is there and readable."""
        results = self._read_results_file(Path(run_dir))
        if results is None:
            return False
        self.set_results(run_id, results)
        return True

    def beat(self, runs: Mapping[str, str]) -> None:
        """Heartbeat for runs this process owns ({run_id: status it believes}).

        A run another process wrongly marked interrupted (this one was suspended longer than
        `stale_after`) gets its status back, as long as it still belongs to this process.
        """
        if not runs:
            return
        now, pid = time.time(), os.getpid()
        with self._tx() as conn:
            conn.executemany(
                "UPDATE runs SET heartbeat = ?, status = CASE status WHEN 'interrupted' THEN ? ELSE status END "
                "WHERE id = ? AND pid = ? AND host = ? AND status IN ('queued', 'running', 'interrupted')",
                [(now, status, run_id, pid, self.host) for run_id, status in runs.items()])

    def delete_run(self, run_id: str, remove_files: bool = False) -> None:
        """Forget a run (and its events); with remove_files, delete its folder if it lies in the data dir."""
        record = self.get_run(run_id)
        if record.status in ACTIVE and self._owner_alive(record.pid, record.host, record.heartbeat, time.time()):
            raise StoreError(f"run {run_id}", f"is {record.status}", "cancel it first")
        with self._tx() as conn:
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        if remove_files and record.run_dir.is_dir() and record.run_dir.parent == self.data_dir:
            shutil.rmtree(record.run_dir, ignore_errors=True)

    # -- interrupted runs -----------------------------------------------------------------------

    def _owner_alive(self, pid: int | None, host: str | None, heartbeat: float | None, now: float) -> bool:
        if heartbeat is None or now - heartbeat > self.stale_after:
            return False
        if host == self.host and pid:
            return pid == os.getpid() or _pid_alive(pid)
        return True  # another machine: trust a recent heartbeat

    def reap(self, now: float | None = None) -> list[str]:
        """Mark queued/running runs whose owning process is gone as interrupted; returns their ids."""
        now = time.time() if now is None else now
        self._last_reap = now
        rows = self._read("SELECT id, pid, host, heartbeat, status FROM runs WHERE status IN ('queued', 'running')")
        dead = [r for r in rows if not self._owner_alive(r[1], r[2], r[3], now)]
        if not dead:
            return []
        reaped = []
        with self._tx() as conn:
            for run_id, pid, host, heartbeat, status in dead:
                # Re-check in the transaction: the owner may have beaten since the read.
                cur = conn.execute("UPDATE runs SET status = 'interrupted', eta = NULL, finished = ?, updated = ? "
                                   "WHERE id = ? AND status = ? AND pid IS ? AND heartbeat IS ?",
                                   (now, now, run_id, status, pid, heartbeat))
                if cur.rowcount:
                    reaped.append(run_id)
                    age = f"{now - heartbeat:.0f} s ago" if heartbeat else "never"
                    conn.execute(_INSERT_EVENT, (run_id, now, "info", "store", None, None, "{}",
                                                 f"interrupted: owner process {pid} on {host} is gone "
                                                 f"(last heartbeat {age}); resume to continue", run_id))
        return reaped

    def _maybe_reap(self, every: float = 5.0) -> None:
        if time.time() - self._last_reap >= every:
            try:
                self.reap()
            except StoreError:
                pass  # a busy database must not break a read

    # -- events ---------------------------------------------------------------------------------

    def append_events(self, run_id: str, events: Iterable[Any], *, progress: float | None = None,
                      eta: float | None = None) -> int:
        """Append events (core.train.Event or dicts) in one transaction; returns the run's last seq."""
        rows = []
        for e in events:
            d = e.to_dict() if hasattr(e, "to_dict") else dict(e)
            rows.append((run_id, float(d.get("time") or time.time()), str(d["kind"]), str(d.get("source") or ""),
                         d.get("step"), d.get("epoch"), _dumps(d.get("metrics") or {}), d.get("message") or "",
                         run_id))
        now = time.time()
        try:
            with self._tx() as conn:
                if rows:
                    conn.executemany(_INSERT_EVENT, rows)
                if progress is not None:
                    conn.execute("UPDATE runs SET progress = ?, eta = ?, heartbeat = ?, updated = ? WHERE id = ?",
                                 (min(max(float(progress), 0.0), 1.0), eta, now, now, run_id))
                last = conn.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        except StoreError:
            if not self._read("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
                raise self._not_found(run_id) from None
            raise
        return int(last or 0)

    def last_seq(self, run_id: str) -> int:
        """The seq of a run's latest event (0 if none)."""
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,))[0][0])

    def events(self, run_id: str, since: int = 0, *, kinds: Iterable[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > `since`, oldest first (poll with the last seq seen)."""
        sql = "SELECT seq, time, kind, source, step, epoch, metrics, message FROM events WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, int(since)]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params += kinds
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = self._read(sql, params)
        if not rows and since == 0:
            self._require(run_id)
        out = []
        for seq, t, kind, source, step, epoch, metrics, message in rows:
            try:
                decoded = json.loads(metrics) if metrics else {}
            except ValueError:
                decoded = {}  # one damaged event must not hide the others
            out.append({"seq": seq, "time": t, "kind": kind, "source": source, "step": step, "epoch": epoch,
                        "metrics": decoded, "message": message})
        return out

    def events_frame(self, run_id: str, since: int = 0, *, kinds: Iterable[str] | None = None) -> pd.DataFrame:
        """Events as a DataFrame (seq, time, kind, source, step, epoch, metrics, message)."""
        import pandas as pd

        rows = self.events(run_id, since, kinds=kinds)
        return pd.DataFrame(rows, columns=["seq", "time", "kind", "source", "step", "epoch", "metrics", "message"])

    def epoch_metrics(self, run_id: str) -> pd.DataFrame:
        """Per-epoch metrics, tidy: one row per (source, epoch, metric) with its value."""
        import pandas as pd

        rows = []
        for e in self.events(run_id, kinds=["epoch"]):
            for metric, value in e["metrics"].items():
                if isinstance(value, (int, float)) and e["epoch"] is not None:
                    rows.append((e["source"], int(e["epoch"]), metric, float(value)))
        df = pd.DataFrame(rows, columns=["source", "epoch", "metric", "value"])
        # A resumed run may repeat an epoch: the latest record wins.
        return df.drop_duplicates(["source", "epoch", "metric"], keep="last").reset_index(drop=True)

    def step_metrics(self, run_id: str, metrics: Iterable[str] | None = None,
                     max_points: int | None = 2000) -> pd.DataFrame:
        """Per-step metrics, tidy (source, step, metric, value), at most `max_points` per series."""
        import pandas as pd

        wanted = set(metrics) if metrics is not None else None
        rows = []
        for e in self.events(run_id, kinds=["step"]):
            for metric, value in e["metrics"].items():
                if (wanted is None or metric in wanted) and isinstance(value, (int, float)) and e["step"] is not None:
                    rows.append((e["source"], int(e["step"]), metric, float(value)))
        df = pd.DataFrame(rows, columns=["source", "step", "metric", "value"])
        df = df.drop_duplicates(["source", "step", "metric"], keep="last")
        if max_points:
            df = downsample(df, x="step", y="value", by=["source", "metric"], max_points=max_points)
        return df.reset_index(drop=True)

    # -- reading runs ---------------------------------------------------------------------------

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound("run", f"no run '{run_id}' in the store '{self.data_dir}'",
                           "list the runs with `kdlab runs` (or the Runs page) and use one of their ids")

    def _require(self, run_id: str) -> None:
        if not self._read("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
            raise self._not_found(run_id)

    def _decode(self, run_id: str, column: str, text: str | None, default: Any) -> Any:
        if text is None:
            return default
        try:
            return json.loads(text)
        except ValueError as err:
            raise StoreError(f"run {run_id}", f"its stored {column} is not valid JSON ({err})",
                             "delete the run or re-run its config; other runs are unaffected") from None

    def _record(self, row: sqlite3.Row | tuple) -> RunRecord:
        d = dict(zip(_RUN_COLUMNS, row))
        run_id = d["id"]
        config = self._decode(run_id, "config", d["config"], None)
        if not isinstance(config, dict):
            raise StoreError(f"run {run_id}", "its stored config is not a mapping",
                             "delete the run or re-run its config; other runs are unaffected")
        return RunRecord(
            id=run_id, name=d["name"], status=d["status"], created=d["created"], updated=d["updated"],
            progress=d["progress"], eta=d["eta"], error=d["error"], config=config,
            results=self._decode(run_id, "results", d["results"], None),
            summary=self._decode(run_id, "summary", d["summary"], {}) or {}, run_dir=Path(d["run_dir"]),
            artifacts=self._decode(run_id, "artifacts", d["artifacts"], {}) or {}, source=d["source"],
            pid=d["pid"], host=d["host"], heartbeat=d["heartbeat"], started=d["started"],
            finished=d["finished"], attempts=d["attempts"])

    def get_run(self, run_id: str, *, require_dir: bool = False) -> RunRecord:
        """One run; RunNotFound for an unknown id, StoreError for damaged JSON or (require_dir) a missing folder."""
        self._maybe_reap()
        rows = self._read(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise self._not_found(run_id)
        record = self._record(rows[0])
        if require_dir and not record.dir_exists:
            raise StoreError(f"run {run_id}", f"its folder '{record.run_dir}' is missing (moved or deleted)",
                             "its stored results and events are still shown; to train it again, submit its "
                             "config as a new run")
        return record

    def find_by_dir(self, run_dir: str | Path) -> RunRecord | None:
        """The latest run recorded with this output folder, if any."""
        folder = str(Path(run_dir).expanduser().absolute())
        rows = self._read("SELECT id FROM runs WHERE run_dir = ? ORDER BY created DESC LIMIT 1", (folder,))
        return self.get_run(rows[0][0]) if rows else None

    def run_ids(self) -> list[str]:
        """Every run id, newest first."""
        return [r[0] for r in self._read("SELECT id FROM runs ORDER BY created DESC, id DESC")]

    def list_runs(self, status: str | Iterable[str] | None = None, *, source: str | None = None,
                  limit: int | None = None) -> pd.DataFrame:
        """Runs newest first, one row each, with the headline numbers of their results."""
        import pandas as pd

        self._maybe_reap()
        sql = f"SELECT {', '.join(_LIST_COLUMNS)} FROM runs"
        where, params = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        if source is not None:
            where.append("source = ?")
            params.append(source)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = []
        for row in self._read(sql, params):
            d = dict(zip(_LIST_COLUMNS, row))
            try:
                summary = json.loads(d.pop("summary") or "{}")
            except ValueError:
                summary = {}  # a damaged row still lists; get_run names the problem
            for key in SUMMARY_KEYS:
                d[key] = summary.get(key) if isinstance(summary, dict) else None
            rows.append(d)
        columns = [c for c in _LIST_COLUMNS if c != "summary"] + list(SUMMARY_KEYS)
        df = pd.DataFrame(rows, columns=columns)
        for col in ("created", "updated", "started", "finished"):
            # Local wall-clock time, as the CLI prints it; NaT where not set (a run not yet finished).
            df[col] = pd.to_datetime([datetime.fromtimestamp(t) if pd.notna(t) else pd.NaT for t in df[col]])
        for col in ("progress", "eta", *SUMMARY_KEYS):
            df[col] = pd.to_numeric(df[col], errors="coerce")
        return df
