"""Sweeps on the dashboard: launch one from the Setup form's config, follow and cancel the running
ones, and resume one that stopped. The job manager trains them; this module only reads and asks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st

from core.config import RunConfig, StudentConfig
from core.errors import KdlabError
from core.store import ACTIVE
from core.sweep_grid import COMMON_AXES, grid_points, parse_axis, read_sweep_spec, sweep_trainings
from dashboard import fields
from dashboard.access import may_operate
from dashboard.state import job_manager

REFRESH_SECONDS = 2.0  # the progress panel polls the job manager this often
AXIS_ROWS = 3          # axes offered on the form; the CLI takes any number
BUSY_SECONDS = 60.0    # a sweep folder whose events.jsonl changed this recently is being trained elsewhere


def axes_from_form(rows: list[tuple[str, str]]) -> list:
    """Axes from (field, 'v1, v2, ...') rows; rows with no values are skipped. Raises ConfigError."""
    return [parse_axis(f"{name}={values}") for name, values in rows if name and values.strip()]


def launcher(cfg: RunConfig | None) -> None:
    """'Sweep student settings': axes over the form's config, seeds, and a Launch sweep button."""
    with st.expander("Sweep student settings"):
        st.caption("Train these teachers once, then a distilled and a scratch student per seed for every "
                   "combination of the values below (comma-separated). Points are ranked by the "
                   "distilled students' val accuracy; follow and chart the sweep on the Compare page.")
        rows = []
        for i in range(AXIS_ROWS):
            left, right = st.columns([2, 3])
            name = left.selectbox(f"Axis {i + 1}", ["", *COMMON_AXES], key=f"sweep_axis_{i}")
            values = right.text_input(f"Values of axis {i + 1}", key=f"sweep_values_{i}",
                                      placeholder="e.g. 1, 2, 4", disabled=not name)
            rows.append((name, values))
        # StudentConfig.seeds' range and help; the form's student seeds as the starting value
        seeds = fields.number_input_for(StudentConfig, "seeds", {"seeds": cfg.student.seeds} if cfg else {},
                                        key="sweep_seeds", label="Student seeds per point",
                                        container=st.columns([1, 3])[0])
        try:
            axes = axes_from_form(rows)
        except KdlabError as err:
            st.error(str(err))
            return
        for axis in axes:
            if axis.warning():
                st.warning(axis.warning())
        if cfg is not None and axes:
            try:
                total = sweep_trainings(cfg, axes, seeds)
            except KdlabError as err:
                st.error(str(err))
                return
            st.caption(f"{len(grid_points(axes))} point(s) x {seeds} seed(s): {total} trainings, teachers included.")
            grid = " ".join(f"--grid {a.field}={','.join(str(v) for v in a.values)}" for a in axes)
            st.caption("The same sweep headless, with the YAML under 'Run it headless' saved as config.yaml:")
            st.code(f"kdlab sweep config.yaml {grid} --seeds {seeds}", language="bash")
        if st.button("Launch sweep", disabled=cfg is None or not axes, key="sweep_launch") and may_operate():
            try:
                sweep_id = job_manager().submit_sweep(cfg, axes, seeds=seeds)
            except KdlabError as err:
                st.error(str(err))
                return
            st.session_state["sweep_dir"] = str(job_manager().store.data_dir / sweep_id)
            st.success(f"queued {sweep_id}: follow it on the Compare page")


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


def resume_offer(folder: Path, sweep: dict[str, Any]) -> None:
    """For a sweep folder with points still to train and no job on it: say so and offer Resume."""
    manager = job_manager()
    if manager.sweep_active(folder.name):
        return
    try:
        _, axes, _ = read_sweep_spec(folder)
    except KdlabError as err:
        st.warning(str(err))
        return
    points = len(grid_points(axes))
    events = folder / "events.jsonl"
    age = time.time() - events.stat().st_mtime if events.is_file() else float("inf")
    done = len(sweep.rows)
    if done < points and age < BUSY_SECONDS:
        st.info(f"{done} of {points} points are done; another process wrote to this sweep "
                f"{age:.0f} s ago (a `kdlab sweep` still running?).")
    elif done < points:
        st.warning(f"{done} of {points} points are done: this sweep stopped before the end.")
        if may_operate() and st.button("Resume sweep", key="sweep_resume"):
            try:
                manager.resume_sweep(folder)
                st.success("queued again: finished students are not trained again")
            except KdlabError as err:
                st.error(str(err))
