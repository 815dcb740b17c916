"""The run lifecycle in the store: create, start, requeue, set status, record events, finish, beat, reap, delete.

A run marked queued/running whose owning process is gone (pid not alive on this host, or no heartbeat
for `stale_after` seconds) is marked `interrupted`; it keeps its events and can be resumed in the same
folder, where the per-epoch checkpoints make it continue.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from core.lifecycle import RunStatus, check_resumable
from core.results import ResultsError, RunResults, headline, read_results
from core.store.schema import SOURCES, Database, StoreError, dumps, new_run_id

if TYPE_CHECKING:
    from core.store.queries import RunRecord

log = logging.getLogger(__name__)

# seq is assigned inside the insert, so writers in several threads or processes never collide.
INSERT_EVENT = ("INSERT INTO events (run_id, seq, time, kind, source, step, epoch, metrics, message) "
                "SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ?, ? FROM events WHERE run_id = ?")
_ACTIVE_SQL = ", ".join(f"'{s.value}'" for s in RunStatus.ACTIVE)
OWNED_TABLES = ("runs", "sweeps")  # rows a live process owns (pid, host, heartbeat)

Results = Mapping[str, Any] | RunResults


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError as err:
        log.debug("cannot tell whether pid %d is alive (%s): counted as gone, so its runs can be resumed",
                  pid, err)
        return False
    return True


def plain_results(results: Results) -> dict[str, Any]:
    """Results as the JSON dict the store keeps (a RunResults model or a mapping)."""
    return results.to_json() if hasattr(results, "to_json") else dict(results)


def read_results_file(run_dir: Path) -> dict[str, Any] | None:
    """`run_dir/results.json` as a dict, or None when it is missing or unreadable."""
    path = Path(run_dir) / "results.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        log.debug("'%s' is not there yet (no stage has finished): nothing to store", path)
        return None
    except (OSError, ValueError) as err:
        log.warning("'%s' cannot be read (%s); the store keeps the results it had", path, err)
        return None
    return data if isinstance(data, dict) else None


def artifacts(run_dir: Path, results: Mapping[str, Any] | None) -> dict[str, Any]:
    """Paths (relative to the run folder) of the files a run left behind."""
    found: dict[str, Any] = {}
    for key, name in (("config", "config.yaml"), ("events", "events.jsonl"), ("results", "results.json")):
        if (run_dir / name).is_file():
            found[key] = name
    if not results:
        return found
    try:
        typed = read_results(results)
    except ResultsError as err:
        log.warning("run folder '%s': no weights listed as artifacts: %s", run_dir, err)
        return found
    for key, entries in (("teachers", typed.teachers), ("students", typed.students)):
        weights = [e.weights for e in entries if e.weights]
        if weights:
            found[key] = weights
    return found


class RunLifecycle(Database):
    """Writing runs: every change of a run's status, progress, results and events."""

    host: str
    stale_after: float
    _last_reap: float

    if TYPE_CHECKING:
        def get_run(self, run_id: str, *, require_dir: bool = False) -> RunRecord: ...

    def run_dir_for(self, run_id: str) -> Path:
        """Where a store-managed run writes its files."""
        return self.data_dir / run_id

    def create_run(self, config: Any, *, name: str | None = None, source: str = "dashboard",
                   status: str = RunStatus.QUEUED, run_id: str | None = None,
                   run_dir: str | Path | None = None, sweep_id: str | None = None,
                   trial: int | None = None) -> str:
        """Record a new run (queued, or running when started right away) owned by this process.

        sweep_id, trial: the run is trial `trial` of that sweep (a row of the sweeps table).
        """
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        if source not in SOURCES:
            raise StoreError("source", f"unknown run source '{source}'", f"use one of {', '.join(SOURCES)}")
        if status not in RunStatus.ACTIVE:
            raise StoreError("status", f"a new run cannot start as '{status}'", "use queued or running")
        name = name or str(cfg.get("name") or "run")
        run_id = run_id or new_run_id(name)
        folder = Path(run_dir).expanduser().absolute() if run_dir is not None else self.run_dir_for(run_id)
        now = time.time()
        running = status == RunStatus.RUNNING
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone():
                raise StoreError("run", f"a run with id '{run_id}' already exists", "pick another id")
            if sweep_id is not None and not conn.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone():
                raise StoreError("sweep", f"no sweep '{sweep_id}' in the store", "create the sweep first")
            conn.execute(
                "INSERT INTO runs (id, name, created, updated, status, progress, config, run_dir, source, "
                "pid, host, heartbeat, started, attempts, sweep_id, trial) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, name, now, now, RunStatus(status).value, dumps(cfg), str(folder), source, os.getpid(),
                 self.host, now, now if running else None, 1 if running else 0, sweep_id, trial))
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
        check_resumable(run_id, record.status)
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute("UPDATE runs SET status = 'queued', pid = ?, host = ?, heartbeat = ?, error = NULL, "
                               "eta = NULL, finished = NULL, updated = ? WHERE id = ? AND status = ?",
                               (os.getpid(), self.host, now, now, run_id, record.status.value))
            if cur.rowcount == 0:
                raise StoreError(f"run {run_id}", "changed while being resumed", "try again")
        return self.get_run(run_id)

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Set a run's status (and error message); a finished status also stamps `finished`."""
        if status not in list(RunStatus):
            raise StoreError("status", f"unknown status '{status}'",
                             f"use one of {', '.join(s.value for s in RunStatus)}")
        finished = time.time() if status in RunStatus.FINISHED else None
        self._update(run_id, "status = ?, error = ?, finished = COALESCE(?, finished)",
                     (RunStatus(status).value, error, finished))

    def set_results(self, run_id: str, results: Results) -> None:
        """Store a run's results (any stage) and their headline numbers."""
        record = self.get_run(run_id)
        data = plain_results(results)
        self._update(run_id, "results = ?, summary = ?", (dumps(data), dumps(headline(data, record.config))))

    def finish_run(self, run_id: str, status: str, *, results: Results | None = None,
                   error: str | None = None) -> None:
        """End an attempt: final status, error, results (read from results.json when not given), artifacts."""
        if status not in RunStatus.FINISHED:
            raise StoreError("status", f"'{status}' is not a final status",
                             f"use one of {', '.join(s.value for s in RunStatus.FINISHED)}")
        status = RunStatus(status)
        record = self.get_run(run_id)
        data = plain_results(results) if results is not None else read_results_file(record.run_dir)
        data = data if data is not None else record.results
        summary = headline(data, record.config) if data else record.summary
        found = artifacts(record.run_dir, data) if record.dir_exists else record.artifacts
        now = time.time()
        done = status == RunStatus.DONE
        self._update(run_id, "status = ?, error = ?, results = ?, summary = ?, artifacts = ?, finished = ?, "
                     "progress = ?, eta = ?, heartbeat = ?",
                     (status.value, error, dumps(data) if data is not None else None, dumps(summary),
                      dumps(found), now, 1.0 if done else record.progress, 0.0 if done else None, now))

    def sync_results(self, run_id: str, run_dir: Path) -> bool:
        """Copy `run_dir/results.json` into the store, if it is there and readable."""
        results = read_results_file(Path(run_dir))
        if results is None:
            return False
        self.set_results(run_id, results)
        return True

    def append_events(self, run_id: str, events: Iterable[Any], *, progress: float | None = None,
                      eta: float | None = None) -> int:
        """Append events (core.train.Event or dicts) in one transaction; returns the run's last seq."""
        rows = []
        for e in events:
            d = e.to_dict() if hasattr(e, "to_dict") else dict(e)
            rows.append((run_id, float(d.get("time") or time.time()), str(d["kind"]), str(d.get("source") or ""),
                         d.get("step"), d.get("epoch"), dumps(d.get("metrics") or {}), d.get("message") or "",
                         run_id))
        now = time.time()
        try:
            with self._tx() as conn:
                if rows:
                    conn.executemany(INSERT_EVENT, rows)
                if progress is not None:
                    conn.execute("UPDATE runs SET progress = ?, eta = ?, heartbeat = ?, updated = ? WHERE id = ?",
                                 (min(max(float(progress), 0.0), 1.0), eta, now, now, run_id))
                last = conn.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0]
        except StoreError:
            if not self._read("SELECT 1 FROM runs WHERE id = ?", (run_id,)):
                raise self._not_found(run_id) from None
            raise
        return int(last or 0)

    def beat(self, runs: Mapping[str, str]) -> None:
        """Heartbeat for runs and sweeps this process owns ({id: status it believes}).

        A run another process wrongly marked interrupted (this one was suspended longer than
        `stale_after`) gets its status back, as long as it still belongs to this process.
        """
        if not runs:
            return
        now, pid = time.time(), os.getpid()
        rows = [(now, RunStatus(status).value, run_id, pid, self.host) for run_id, status in runs.items()]
        with self._tx() as conn:
            for table in OWNED_TABLES:  # ids are unique across both: a sweep's id is its folder's name
                conn.executemany(
                    f"UPDATE {table} SET heartbeat = ?, status = CASE status WHEN 'interrupted' THEN ? ELSE status "
                    f"END WHERE id = ? AND pid = ? AND host = ? AND status IN ({_ACTIVE_SQL}, 'interrupted')", rows)

    def delete_run(self, run_id: str, remove_files: bool = False) -> None:
        """Forget a run (and its events); with remove_files, delete its folder if it lies in the data dir."""
        record = self.get_run(run_id)
        if record.status in RunStatus.ACTIVE and self._owner_alive(record.pid, record.host, record.heartbeat,
                                                                   time.time()):
            raise StoreError(f"run {run_id}", f"is {record.status}", "cancel it first")
        with self._tx() as conn:
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        if remove_files and record.run_dir.is_dir() and record.run_dir.parent == self.data_dir:
            try:
                shutil.rmtree(record.run_dir)
            except OSError as err:  # the record is gone either way; what is left is only disk space
                log.warning("run %s was deleted, but its folder '%s' was not removed: %s", run_id,
                            record.run_dir, err)

    # -- interrupted runs -----------------------------------------------------------------------

    def _owner_alive(self, pid: int | None, host: str | None, heartbeat: float | None, now: float) -> bool:
        if heartbeat is None or now - heartbeat > self.stale_after:
            return False
        if host == self.host and pid:
            return pid == os.getpid() or _pid_alive(pid)
        return True  # another machine: trust a recent heartbeat

    def reap(self, now: float | None = None) -> list[str]:
        """Mark queued/running runs and sweeps whose owning process is gone as interrupted; returns their ids."""
        now = time.time() if now is None else now
        self._last_reap = now
        reaped = self._reap_sweeps(now)
        rows = self._read(f"SELECT id, pid, host, heartbeat, status FROM runs WHERE status IN ({_ACTIVE_SQL})")
        dead = [r for r in rows if not self._owner_alive(r[1], r[2], r[3], now)]
        if not dead:
            return reaped
        with self._tx() as conn:
            for run_id, pid, host, heartbeat, status in dead:
                # Re-check in the transaction: the owner may have beaten since the read.
                cur = conn.execute("UPDATE runs SET status = 'interrupted', eta = NULL, finished = ?, updated = ? "
                                   "WHERE id = ? AND status = ? AND pid IS ? AND heartbeat IS ?",
                                   (now, now, run_id, status, pid, heartbeat))
                if cur.rowcount:
                    reaped.append(run_id)
                    age = f"{now - heartbeat:.0f} s ago" if heartbeat else "never"
                    conn.execute(INSERT_EVENT, (run_id, now, "info", "store", None, None, "{}",
                                                f"interrupted: owner process {pid} on {host} is gone "
                                                f"(last heartbeat {age}); resume to continue", run_id))
        if reaped:
            log.info("marked %d run(s) interrupted (their owner is gone): %s", len(reaped), ", ".join(reaped))
        return reaped

    def _reap_sweeps(self, now: float) -> list[str]:
        rows = self._read(f"SELECT id, pid, host, heartbeat, status FROM sweeps WHERE status IN ({_ACTIVE_SQL})")
        dead = [r for r in rows if not self._owner_alive(r[1], r[2], r[3], now)]
        reaped = []
        if dead:
            with self._tx() as conn:
                for sweep_id, pid, _, heartbeat, status in dead:
                    cur = conn.execute("UPDATE sweeps SET status = 'interrupted', finished = ?, updated = ? "
                                       "WHERE id = ? AND status = ? AND pid IS ? AND heartbeat IS ?",
                                       (now, now, sweep_id, status, pid, heartbeat))
                    reaped += [sweep_id] * cur.rowcount
        if reaped:
            log.info("marked %d sweep(s) interrupted (their owner is gone): %s", len(reaped), ", ".join(reaped))
        return reaped

    def _maybe_reap(self, every: float = 5.0) -> None:
        if time.time() - self._last_reap >= every:
            try:
                self.reap()
            except StoreError as err:  # a busy database must not break a read; the next read tries again
                log.debug("reaping interrupted runs skipped: %s", err)
