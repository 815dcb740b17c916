"""Sweeps in the store: a row per search (its spec, status, progress and pick), its trials as runs.

A sweep row is owned by the process running it, like a run (pid, host, heartbeat; reaped to
`interrupted` when that process is gone). Each trial is a row of `runs` with `sweep_id` and
`trial` set, so every listing, page and command that opens a run opens a trial. The study itself
(what Optuna samples from) lives in Optuna's own storage, named by `storage` and `study`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from core.lifecycle import RunStatus, check_resumable
from core.store.schema import SOURCES, Database, StoreError, dumps

if TYPE_CHECKING:
    import pandas as pd

    from core.store.queries import RunRecord

log = logging.getLogger(__name__)

_COLUMNS = ("id", "name", "created", "updated", "status", "progress", "error", "config", "spec", "sweep_dir",
            "storage", "study", "best", "summary", "source", "pid", "host", "heartbeat", "started", "finished",
            "attempts")


@dataclass
class SweepRecord:
    """One row of the sweeps table, JSON columns decoded."""

    id: str
    name: str
    status: RunStatus
    created: float
    updated: float
    progress: float
    error: str | None
    config: dict[str, Any]           # the base config
    spec: dict[str, Any]             # the search (core.search.SearchSpec as JSON)
    sweep_dir: Path
    storage: str                     # Optuna storage URL
    study: str                       # Optuna study name
    best: str | None                 # run id of the picked trial
    summary: dict[str, Any]
    source: str
    pid: int | None = None
    host: str | None = None
    heartbeat: float | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0

    @property
    def resumable(self) -> bool:
        return self.status in RunStatus.RESUMABLE

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"], d["sweep_dir"] = self.status.value, str(self.sweep_dir)
        return d


def _decoded(sweep_id: str, column: str, text: str | None, default: Any) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError as err:
        raise StoreError(f"sweep {sweep_id}", f"its stored {column} is not valid JSON ({err})",
                         "delete the sweep; its trials' folders stay on disk") from None


class SweepRows(Database):
    """Create, own, update, finish, list and delete sweeps; their trials are runs (core.store.runs)."""

    if TYPE_CHECKING:
        host: str

        def get_run(self, run_id: str, *, require_dir: bool = False) -> RunRecord: ...
        def list_runs(self, status: Any = None, *, source: str | None = None, limit: int | None = None,
                      sweep_id: str | None = None) -> pd.DataFrame: ...
        def _maybe_reap(self, every: float = 5.0) -> None: ...

    def create_sweep(self, sweep_id: str, config: Mapping[str, Any], spec: Mapping[str, Any], *, sweep_dir: Path,
                     storage: str, study: str, name: str | None = None, source: str = "cli",
                     status: str = RunStatus.RUNNING) -> str:
        """Record a new sweep (queued, or running when started right away) owned by this process."""
        if source not in SOURCES:
            raise StoreError("source", f"unknown source '{source}'", f"use one of {', '.join(SOURCES)}")
        if status not in RunStatus.ACTIVE:
            raise StoreError("status", f"a new sweep cannot start as '{status}'", "use queued or running")
        now = time.time()
        running = status == RunStatus.RUNNING
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM sweeps WHERE id = ?", (sweep_id,)).fetchone():
                raise StoreError("sweep", f"a sweep with id '{sweep_id}' already exists", "pick another --out folder")
            conn.execute(
                "INSERT INTO sweeps (id, name, created, updated, status, progress, config, spec, sweep_dir, storage, "
                "study, source, pid, host, heartbeat, started, attempts) "
                "VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sweep_id, name or str(config.get("name") or "sweep"), now, now, RunStatus(status).value,
                 dumps(dict(config)), dumps(dict(spec)), str(Path(sweep_dir).absolute()), storage, study, source,
                 os.getpid(), self.host, now, now if running else None, 1 if running else 0))
        return sweep_id

    def _update_sweep(self, sweep_id: str, sql: str, params: tuple[Any, ...]) -> None:
        with self._tx() as conn:
            cur = conn.execute(f"UPDATE sweeps SET {sql}, updated = ? WHERE id = ?", (*params, time.time(), sweep_id))
            if cur.rowcount == 0:
                raise self._sweep_not_found(sweep_id)

    def start_sweep(self, sweep_id: str, spec: Mapping[str, Any] | None = None, study: str | None = None) -> None:
        """Mark a sweep running, owned by this process (a new attempt); `spec` and `study` replace the stored ones."""
        now = time.time()
        self._update_sweep(sweep_id, "status = 'running', pid = ?, host = ?, heartbeat = ?, started = ?, "
                           "finished = NULL, error = NULL, attempts = attempts + 1, spec = COALESCE(?, spec), "
                           "study = COALESCE(?, study)",
                           (os.getpid(), self.host, now, now, dumps(dict(spec)) if spec is not None else None, study))

    def requeue_sweep(self, sweep_id: str) -> SweepRecord:
        """Put an interrupted, failed or cancelled sweep back to queued, owned by this process."""
        record = self.get_sweep(sweep_id)
        check_resumable(sweep_id, record.status)
        self._update_sweep(sweep_id, "status = 'queued', pid = ?, host = ?, heartbeat = ?, error = NULL",
                           (os.getpid(), self.host, time.time()))
        return self.get_sweep(sweep_id)

    def update_sweep(self, sweep_id: str, *, progress: float | None = None, summary: Mapping[str, Any] | None = None,
                     best: str | None = None) -> None:
        """Progress in [0, 1], the listing summary and the picked trial's run id, as the search goes."""
        self._update_sweep(sweep_id, "progress = COALESCE(?, progress), summary = COALESCE(?, summary), "
                           "best = COALESCE(?, best), heartbeat = ?",
                           (None if progress is None else min(max(float(progress), 0.0), 1.0),
                            dumps(dict(summary)) if summary is not None else None, best, time.time()))

    def finish_sweep(self, sweep_id: str, status: str, error: str | None = None) -> None:
        """End a sweep's attempt with a final status (and its one-line error)."""
        if status not in RunStatus.FINISHED:
            raise StoreError("status", f"'{status}' is not a final status",
                             f"use one of {', '.join(s.value for s in RunStatus.FINISHED)}")
        done = status == RunStatus.DONE
        self._update_sweep(sweep_id, "status = ?, error = ?, finished = ?, progress = CASE WHEN ? THEN 1 ELSE "
                           "progress END", (RunStatus(status).value, error, time.time(), done))

    def set_trial(self, run_id: str, trial: int) -> None:
        """A retried trial keeps its run row (and folder); its number becomes the new attempt's."""
        with self._tx() as conn:
            if conn.execute("UPDATE runs SET trial = ?, updated = ? WHERE id = ?",
                            (trial, time.time(), run_id)).rowcount == 0:
                raise StoreError("run", f"no run '{run_id}' in the store", "")

    # -- reading ------------------------------------------------------------------------------------

    def _sweep_not_found(self, sweep_id: str) -> StoreError:
        return StoreError("sweep", f"no sweep '{sweep_id}' in the store '{self.data_dir}'",
                          "list the sweeps with `kdlab sweeps` (or the Search page) and use one of their ids")

    def _sweep_record(self, row: sqlite3.Row | tuple) -> SweepRecord:
        d = dict(zip(_COLUMNS, row))
        sid = d["id"]
        return SweepRecord(
            id=sid, name=d["name"], status=RunStatus(d["status"]), created=d["created"], updated=d["updated"],
            progress=d["progress"], error=d["error"], config=_decoded(sid, "config", d["config"], {}),
            spec=_decoded(sid, "spec", d["spec"], {}), sweep_dir=Path(d["sweep_dir"]), storage=d["storage"],
            study=d["study"], best=d["best"], summary=_decoded(sid, "summary", d["summary"], {}) or {},
            source=d["source"], pid=d["pid"], host=d["host"], heartbeat=d["heartbeat"], started=d["started"],
            finished=d["finished"], attempts=d["attempts"])

    def get_sweep(self, sweep_id: str) -> SweepRecord:
        """One sweep; StoreError naming `kdlab sweeps` for an unknown id."""
        self._maybe_reap()
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM sweeps WHERE id = ?", (sweep_id,))
        if not rows:
            raise self._sweep_not_found(sweep_id)
        return self._sweep_record(rows[0])

    def find_sweep_by_dir(self, sweep_dir: str | Path) -> SweepRecord | None:
        """The sweep recorded with this folder, if any."""
        folder = str(Path(sweep_dir).expanduser().absolute())
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM sweeps WHERE sweep_dir = ? ORDER BY created DESC "
                          "LIMIT 1", (folder,))
        return self._sweep_record(rows[0]) if rows else None

    def sweeps(self) -> list[SweepRecord]:
        """Every sweep, newest first."""
        self._maybe_reap()
        return [self._sweep_record(r)
                for r in self._read(f"SELECT {', '.join(_COLUMNS)} FROM sweeps ORDER BY created DESC, id DESC")]

    def trials(self, sweep_id: str) -> list[RunRecord]:
        """A sweep's trial runs, in trial order."""
        ids = [r[0] for r in self._read("SELECT id FROM runs WHERE sweep_id = ? ORDER BY trial, created", (sweep_id,))]
        return [self.get_run(i) for i in ids]

    def delete_sweep(self, sweep_id: str, remove_files: bool = False) -> None:
        """Forget a sweep and its trial runs; with remove_files, delete its folder if it lies in the data dir."""
        record = self.get_sweep(sweep_id)
        if record.status in RunStatus.ACTIVE:
            raise StoreError(f"sweep {sweep_id}", f"is {record.status}", "cancel it first")
        with self._tx() as conn:
            conn.execute("DELETE FROM events WHERE run_id IN (SELECT id FROM runs WHERE sweep_id = ?)", (sweep_id,))
            conn.execute("DELETE FROM runs WHERE sweep_id = ?", (sweep_id,))
            conn.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,))
        if remove_files and record.sweep_dir.is_dir() and record.sweep_dir.parent == self.data_dir:
            try:
                shutil.rmtree(record.sweep_dir)
            except OSError as err:
                log.warning("sweep %s was deleted, but its folder '%s' was not removed: %s", sweep_id,
                            record.sweep_dir, err)
