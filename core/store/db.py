"""The run store: one SQLite database (WAL) beside one folder per run, shared by the CLI and the dashboard.

A data directory (default `./kdlab-runs`, or `$KDLAB_RUNS`) holds:

  kdlab.db     runs, their events, sweeps and the schema version
  optuna.db    the sweeps' Optuna studies (Optuna's own RDB storage)
  <run_id>/    the run's output folder (config.yaml, events.jsonl, results.json, checkpoints)

It is written by background worker threads and read by many dashboard sessions at once. `RunStore`
is the one public class; its parts live by job:

  core.store.schema       layout, schema versions and migrations, sqlite3 errors -> StoreError, health
  core.store.errors       the store's errors and the fixes they name
  core.store.connections  per-thread connections, reopened when the file is moved, deleted or replaced
  core.store.runs         the run lifecycle: create, start, requeue, status, events, finish, beat, reap, delete
  core.store.queries      reading: get_run, list_runs, events, epoch_metrics, step_metrics
  core.store.sweeps       sweeps (searches): their rows, owners and picks; their trials are runs
  core.store.recovery     moving a damaged file aside
  core.store.reindex      store rows rebuilt from the run folders
  core.store.listing      runs and reindex reports as terminal tables

A damaged file is never repaired in place: `recover_store` (`kdlab store recover`) moves it aside and
starts an empty store, and `RunStore.reindex` (`kdlab runs reindex`) brings back the runs whose
folders are in the data directory. The store persists; it does not interpret results (the headline
numbers come from core.results).
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.lifecycle import one_line
from core.store import recovery
from core.store.connections import swapping
from core.store.queries import RunQueries, RunRecord
from core.store.runs import RunLifecycle
from core.store.sweeps import SweepRecord, SweepRows
from core.store.schema import (DB_NAME, NothingToRecover, StoreDamaged, StoreError, default_data_dir,
                               new_store_notice)

if TYPE_CHECKING:
    from core.store.reindex import ReindexReport

__all__ = ["RunRecord", "RunStore", "SweepRecord", "StoreError", "recover_store", "store_damaged", "store_problem"]

log = logging.getLogger(__name__)


def _folder(data_dir: str | Path | None) -> Path:
    return Path(data_dir if data_dir is not None else default_data_dir()).expanduser().absolute()


class RunStore(RunLifecycle, RunQueries, SweepRows):
    """Runs, their events and artifact paths in `<data_dir>/kdlab.db`; safe from many threads."""

    def __init__(self, data_dir: str | Path | None = None, *, stale_after: float = 60.0,
                 busy_timeout: float = 30.0, reap: bool = True) -> None:
        self.stale_after = stale_after      # seconds without a heartbeat before a run counts as dead
        self.host = socket.gethostname()
        self._last_reap = 0.0
        self._init_database(_folder(data_dir), busy_timeout)
        if reap:
            self.reap()

    def reindex(self) -> ReindexReport:
        """Add the run folders under the data dir that the store does not know; see core.store.reindex."""
        from core.store.reindex import reindex  # it imports the recorder, which imports this module

        return reindex(self)

    def move_aside(self) -> Path:
        """Rename this store's file (and -wal/-shm) to `kdlab.db.damaged-<time>`, reopen a fresh one in place."""
        moved = recovery.move_aside(self.db_path)
        with swapping(), self._pool.gate.exclusive():
            self._reopen()
        return moved

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore('{self.data_dir}')"


def store_problem(data_dir: str | Path | None = None, *, thorough: bool = False) -> str | None:
    """One line on what is wrong with the run store in `data_dir` (or worth knowing), None if it is fine.

    Never raises for a store problem, so a page can show the line instead of a traceback.
    """
    try:
        # A short wait for a writer's lock: a page asking must not hang for the usual 30 s.
        store = RunStore(data_dir, reap=False, busy_timeout=5.0)
    except StoreError as err:
        return one_line(err)
    try:
        return store.health(thorough=thorough)
    finally:
        store.close()


def store_damaged(data_dir: str | Path | None = None, *, thorough: bool = False) -> bool:
    """Whether the store's file is damaged (what `recover_store` fixes); other store problems raise as they are.

    thorough: also SQLite's quick check over the whole file, for damage deeper than the opening reads.
    """
    try:
        store = RunStore(_folder(data_dir), reap=False)
    except StoreDamaged as err:
        log.info("run store damaged: %s", err)
        return True
    try:
        if thorough:
            store.check(thorough=True)
    except StoreDamaged as err:
        log.info("run store damaged beyond its opening reads: %s", err)
        return True
    finally:
        store.close()
    return False


def recover_store(data_dir: str | Path | None = None) -> Path:
    """Move a damaged `kdlab.db` aside (`kdlab.db.damaged-<time>`, with -wal/-shm) and open a fresh store.

    Returns the moved file's path; nothing is deleted. A store that is not damaged is left alone
    (NothingToRecover, a StoreError, says so), as is one with another problem (locked, unwritable,
    newer kdlab), whose StoreError is raised as is. Reindex afterwards to bring back the runs.
    """
    folder = _folder(data_dir)
    if not store_damaged(folder, thorough=True):
        raise NothingToRecover("store", f"'{folder / DB_NAME}' is not damaged: nothing to move aside",
                               f"bring back run folders it lacks with `kdlab runs reindex --store '{folder}'`")
    moved = recovery.move_aside(folder / DB_NAME)
    with RunStore(folder, reap=False) as fresh:  # the fresh store in place, schema written
        fresh.notice = new_store_notice(folder, f"was damaged and moved aside to '{moved.name}'")
    return moved
