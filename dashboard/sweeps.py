"""Sweeps on the dashboard: follow and cancel the ones this app runs, and resume one that stopped.

The Setup page launches them (dashboard/search_launch.py); the job manager trains them; this module
only reads and asks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from core.errors import KdlabError
from core.lifecycle import RunStatus
from core.search.spec import SearchSpec, read_search_folder
from core.store import ACTIVE
from core.sweep_grid import grid_points, read_sweep_spec
from dashboard.access import may_operate
from dashboard.state import job_manager

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # the progress panel polls the job manager this often
BUSY_SECONDS = 60.0    # a sweep folder whose events.jsonl changed this recently is being trained elsewhere
SPENT_STATES = ("pruned", "failed")  # trials that spent the budget without a row in sweep.json


@st.fragment(run_every=REFRESH_SECONDS)
def progress_panel() -> None:
    """The sweeps launched from this app: progress, stage, errors, and Cancel for active ones."""
    manager = job_manager()
    for job in manager.sweeps()[:5]:
        text = f"{job['id']}: {job['status']}, {job['points_done']}/{job['points']} points"
        st.progress(job["progress"], text=text if job["status"] == "done" else f"{text}. {job['stage']}")
        if job["error"]:
            st.error(job["error"])
        if job["status"] in ACTIVE and may_operate() and st.button("Cancel", key=f"sweep_cancel_{job['id']}"):
            manager.cancel_sweep(job["id"])




def _how_to_resume(folder: Path) -> tuple[int, Callable[[], str]] | None:
    """The folder's trial budget and how to queue it again; None when it needs nothing (its row is done).

    Its row in the store when it has one; else its search.json (a folder copied from another store: it
    continues here as a new study, its trials' students resuming from their checkpoints); else the
    sweep.yaml of a grid from before sweeps were store rows.
    """
    manager = job_manager()
    record = manager.store.find_sweep_by_dir(folder)
    if record is not None:
        if record.status == RunStatus.DONE:
            return None
        return SearchSpec.model_validate(record.spec).trials, lambda: manager.resume_sweep(folder)
    found = read_search_folder(folder)
    if found is not None:
        return found[1].trials, lambda: manager.resume_sweep(folder)
    _, axes, _ = read_sweep_spec(folder)
    return len(grid_points(axes)), lambda: manager.resume_sweep(folder)


def resume_offer(folder: Path, sweep: Any) -> None:
    """For a sweep folder (core.sweep.LoadedSweep) with trials still to train and no job on it: say so and
    offer Resume."""
    if job_manager().sweep_active(folder.name):
        return
    try:
        found = _how_to_resume(folder)
    except KdlabError as err:
        st.warning(str(err))
        return
    if found is None:
        return
    budget, resume = found
    events = folder / "events.jsonl"
    age = time.time() - events.stat().st_mtime if events.is_file() else float("inf")
    done = len(sweep.rows) + sum(t.state in SPENT_STATES for t in sweep.file.trials)
    if done < budget and age < BUSY_SECONDS:
        st.info(f"{done} of {budget} points are done; another process wrote to this sweep "
                f"{age:.0f} s ago (a `kdlab sweep` still running?).")
    elif done < budget:
        st.warning(f"{done} of {budget} points are done: this sweep stopped before the end.")
        if may_operate() and st.button("Resume sweep", key="sweep_resume"):
            try:
                resume()
                st.success("queued again: finished students are not trained again")
            except KdlabError as err:
                st.error(str(err))
