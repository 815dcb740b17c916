"""Runs: the queue and history from the store; progress, ETA, cancel, resume and live curves."""

from __future__ import annotations

import time

import streamlit as st

from core.errors import KdlabError
from core.store import ACTIVE
from dashboard import figures
from dashboard.state import job_manager, run_store

REFRESH_SECONDS = 2.0  # live parts of the page poll the store this often while a run is active

st.title("Runs")
manager = job_manager()
store = run_store()


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


@st.fragment(run_every=REFRESH_SECONDS)
def run_table() -> None:
    """Queue and history; refreshed on its own so the rest of the page stays usable."""
    active = [s for s in manager.sweeps() if s["status"] in ACTIVE]
    if active:  # a run waiting behind a sweep should say why
        listed = "; ".join(f"{s['id']} {s['status']} ({s['points_done']}/{s['points']} points)" for s in active)
        st.info(f"Sweeps share this queue: {listed}. Follow them on the Compare page.")
    runs = store.list_runs()
    if runs.empty:
        st.info("No runs yet: set one up on the Setup page and press Launch.")
        return
    shown = runs[["id", "name", "status", "progress", "eta", "kd_test_acc", "gain_recovery"]].copy()
    shown["eta"] = shown["eta"].map(_eta)
    st.dataframe(shown, hide_index=True, width="stretch", key="runs_table",
                 column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0,
                                                                            max_value=1.0, format="percent"),
                                "kd_test_acc": st.column_config.NumberColumn("KD test acc", format="%.4f"),
                                "gain_recovery": st.column_config.NumberColumn("gain recovery", format="%.2f")})


run_table()

ids = store.run_ids()
if not ids:
    st.stop()
selected = st.session_state.get("selected_run")
index = ids.index(selected) if selected in ids else 0
run_id = st.selectbox("Run", ids, index=index, key="run_select")
st.session_state["selected_run"] = run_id


@st.fragment(run_every=REFRESH_SECONDS)
def run_detail(run_id: str) -> None:
    """Status, progress, ETA and live per-epoch curves of one run."""
    try:
        run = store.get_run(run_id)
    except KdlabError as err:
        st.warning(str(err))
        return
    a, b, c = st.columns(3)
    a.metric("status", run.status)
    b.metric("progress", f"{run.progress:.0%}")
    c.metric("ETA", _eta(run.eta) or "-")
    st.progress(min(max(run.progress, 0.0), 1.0))
    if run.error:
        st.error(run.error)
    if run.status in ("queued", "running"):
        if st.button("Cancel", key=f"cancel_{run_id}"):
            manager.cancel(run_id)
            st.toast(f"cancelling {run_id}")
    elif run.resumable and run.dir_exists:
        if st.button("Resume from the last checkpoint", key=f"resume_{run_id}"):
            try:
                manager.resume(run_id)
                st.toast(f"{run_id} queued again")
            except KdlabError as err:
                st.error(str(err))
    frame = store.epoch_metrics(run_id)
    if frame.empty:
        st.caption("Curves appear after the first epoch." if run.status in ("queued", "running")
                   else "This run recorded no epochs.")
        return
    left, right = st.columns(2)
    left.plotly_chart(figures.training_curves(frame, "val/loss"), width="stretch", key=f"loss_{run_id}")
    right.plotly_chart(figures.training_curves(frame, "val/acc"), width="stretch", key=f"acc_{run_id}")
    st.caption(f"updated {time.strftime('%H:%M:%S')}")


run_detail(run_id)
