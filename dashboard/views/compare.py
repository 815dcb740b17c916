"""Compare: runs side by side (config differences and metrics), and a student sweep's points;
load a run's (or a sweep point's) config into Setup."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from core.errors import KdlabError
from core.sweep import find_sweeps, load_sweep
from dashboard import figures, sweeps
from dashboard.access import may_operate
from dashboard.state import job_manager, run_store
from dashboard.tables import show_table

st.title("Compare")


def sweep_section() -> None:
    """A sweep folder (from the Setup page or `kdlab sweep`): its points charted and tabled, live while
    it trains; any point loads into Setup."""
    found = [str(p) for p in find_sweeps(run_store().data_dir)]
    with st.expander("Student sweeps", expanded=bool(found or st.session_state.get("sweep_dir"))):
        sweeps.progress_panel()
        if found:
            st.selectbox("Sweeps in the run store's folder, newest first", ["", *found], key="sweep_found",
                         on_change=lambda: st.session_state.update(sweep_dir=st.session_state["sweep_found"]))
        if may_operate():  # a viewer picks among the store's sweeps; typing a path reads any folder
            folder = st.text_input("Sweep folder", key="sweep_dir", placeholder="kdlab-runs/sweep-...")
        else:
            folder = st.session_state.get("sweep_found", "")
        if folder:
            sweep_view(Path(folder))


def sweep_view(folder: Path) -> None:
    """One sweep; redrawn every few seconds while a job of this app trains it."""
    if job_manager().sweep_active(folder.name):
        st.fragment(run_every=sweeps.REFRESH_SECONDS)(sweep_points)(folder)
    else:
        sweep_points(folder)


def sweep_points(folder: Path) -> None:
    """A sweep's chart, table and 'Load point into Setup' (or why there is nothing to show yet)."""
    try:
        sweep = load_sweep(folder)
    except KdlabError as err:
        if job_manager().sweep_active(folder.name):
            st.info("The sweep is training its teachers; its points appear here as they finish.")
        else:
            st.error(str(err))
        return
    sweeps.resume_offer(folder, sweep)
    rows, best = [r.to_json() for r in sweep.rows], sweep.file.best
    st.plotly_chart(figures.sweep_chart(rows, best, sweep.file.axes), key="sweep_chart")
    table = pd.DataFrame(rows)[["point", "kd_val_acc", "kd_test_acc_mean", "kd_test_acc_std",
                                "scratch_test_acc_mean", "scratch_test_acc_std", "paired_gain_mean",
                                "paired_gain_std", "gain_recovery", "seeds"]]
    show_table(table, key="sweep_table")
    labels = [r["point"] for r in rows]
    pick = st.selectbox("Point", labels, index=best or 0, key="sweep_point",
                        help="Preselected: the best by KD val accuracy.")
    if st.button("Load point into Setup", key="sweep_load"):
        st.session_state["loaded_config"] = sweep.point_config(labels.index(pick))
        st.switch_page("views/setup.py")


sweep_section()
store = run_store()
runs = store.list_runs()
if runs.empty:
    st.info("No runs yet: launch one on the Setup page.")
    st.stop()
ids = list(runs["id"])
chosen = st.multiselect("Runs", ids, default=ids[:2], key="compare_runs")
records = []
for run_id in chosen:
    try:
        records.append(store.get_run(run_id))
    except KdlabError as err:
        st.warning(str(err))
if not records:
    st.stop()

metrics = pd.DataFrame([{"run": r.id, "status": r.status, **{k: r.summary.get(k) for k in
                         ("kd_test_acc", "scratch_test_acc", "ensemble_test_acc", "best_teacher_test_acc",
                          "gain_recovery")}} for r in records])
st.subheader("Metrics")
show_table(metrics, key="compare_metrics")
if len(records) >= 2:
    st.subheader(f"Config differences against {records[0].id}")
    for other in records[1:]:
        diff = figures.config_diff(records[0].config, other.config)
        st.caption(other.id)
        if diff.empty:
            st.write("same config")
        else:
            st.dataframe(diff, hide_index=True, width="stretch", key=f"diff_{other.id}")

source = st.selectbox("Load a run's config into Setup", [r.id for r in records], key="load_source")
if st.button("Load into Setup", key="load_config"):
    st.session_state["loaded_config"] = next(r.config for r in records if r.id == source)
    st.switch_page("views/setup.py")
