"""The persistent run store: SQLite (WAL) database of runs and events, one folder per run.

The dashboard and the CLI read and write the same store; see `core.store.db` for the layout.
"""

from core.store.db import (ACTIVE, DB_NAME, DEFAULT_DIR, ENV_VAR, FINISHED, RESUMABLE, RUN_STATUSES,
                           SCHEMA_VERSION, SOURCES, RunNotFound, RunRecord, RunStore, StoreError,
                           default_data_dir, new_run_id, summarize)
from core.store.frames import MAX_POINTS, downsample, downsample_indices
from core.store.recorder import Heartbeat, StoreRecorder, expected_trainings

__all__ = ["ACTIVE", "DB_NAME", "DEFAULT_DIR", "ENV_VAR", "FINISHED", "MAX_POINTS", "RESUMABLE",
           "RUN_STATUSES", "SCHEMA_VERSION", "SOURCES", "Heartbeat", "RunNotFound", "RunRecord", "RunStore",
           "StoreError", "StoreRecorder", "default_data_dir", "downsample", "downsample_indices",
           "expected_trainings", "new_run_id", "summarize"]
