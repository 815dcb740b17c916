"""The run store: one SQLite database (WAL) beside one folder per run, shared by the CLI and the dashboard.

A data directory (default `./kdlab-runs`, or `$KDLAB_RUNS`) holds:

  kdlab.db     runs, their events and the schema version
  <run_id>/    the run's output folder (config.yaml, events.jsonl, results.json, checkpoints)

It is written by background worker threads and read by many dashboard sessions at once. `RunStore`
is the one public class; its parts live by job:

  core.store.schema    layout, schema versions and migrations, connections, sqlite3 errors -> StoreError
  core.store.runs      the run lifecycle: create, start, requeue, status, events, finish, beat, reap, delete
  core.store.queries   reading: get_run, list_runs, events, epoch_metrics, step_metrics

The store persists; it does not interpret results (the headline numbers come from core.results).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from core.store.queries import RunQueries, RunRecord
from core.store.runs import RunLifecycle
from core.store.schema import StoreError, default_data_dir

__all__ = ["RunRecord", "RunStore", "StoreError"]


class RunStore(RunLifecycle, RunQueries):
    """Runs, their events and artifact paths in `<data_dir>/kdlab.db`; safe from many threads."""

    def __init__(self, data_dir: str | Path | None = None, *, stale_after: float = 60.0,
                 busy_timeout: float = 30.0, reap: bool = True) -> None:
        self.stale_after = stale_after      # seconds without a heartbeat before a run counts as dead
        self.host = socket.gethostname()
        self._last_reap = 0.0
        folder = Path(data_dir if data_dir is not None else default_data_dir()).expanduser().absolute()
        self._init_database(folder, busy_timeout)
        if reap:
            self.reap()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore('{self.data_dir}')"
