"""The persistent run store: SQLite (WAL) database of runs and events, one folder per run.

The dashboard and the CLI read and write the same store; see `core.store.db` for the layout. A page
asks `store_problem(data_dir)` (or `RunStore.health()`) for one line to show instead of a traceback,
`recover_store(data_dir)` moves a damaged file aside, and `RunStore.reindex()` brings runs back from
their folders.
"""

from core.lifecycle import NotResumable, RunStatus, check_resumable, final_status
from core.store.db import RunRecord, RunStore, SweepRecord, recover_store, store_damaged, store_problem
from core.store.frames import MAX_POINTS, downsample, downsample_indices
from core.store.recorder import Heartbeat, StoreRecorder, expected_trainings, record_run
from core.store.reindex import Reindexed, ReindexReport
from core.store.schema import (DB_NAME, DEFAULT_DIR, ENV_VAR, SCHEMA_VERSION, SOURCES, NothingToRecover, RunNotFound,
                               StoreDamaged, StoreError, default_data_dir, new_run_id)

# The status groups under their older names (the dashboard and the CLI use them).
RUN_STATUSES = tuple(RunStatus)
ACTIVE = RunStatus.ACTIVE
FINISHED = RunStatus.FINISHED
RESUMABLE = RunStatus.RESUMABLE

__all__ = ["ACTIVE", "DB_NAME", "DEFAULT_DIR", "ENV_VAR", "FINISHED", "MAX_POINTS", "RESUMABLE",
           "RUN_STATUSES", "SCHEMA_VERSION", "SOURCES", "Heartbeat", "NotResumable", "NothingToRecover",
           "ReindexReport", "Reindexed", "RunNotFound", "RunRecord", "RunStatus", "RunStore", "SweepRecord", "StoreDamaged",
           "StoreError", "StoreRecorder", "check_resumable", "default_data_dir", "downsample", "downsample_indices",
           "expected_trainings", "final_status", "new_run_id", "record_run", "recover_store", "store_damaged", "store_problem"]
