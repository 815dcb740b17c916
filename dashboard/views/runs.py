"""Runs: the queue and history from the store; progress, ETA, cancel, resume and live curves.

Cheap on every rerun, because it reruns every REFRESH_SECONDS while a run is on screen and a page
switch must not wait behind training: no torch import, the listing cached for a second, and each
figure built once per version of its run (state.curve_figure).
"""

from __future__ import annotations

import time

import streamlit as st

from core.errors import KdlabError
from core.store import ACTIVE
from dashboard import figures
from dashboard.access import may_operate
from dashboard.state import curve_figure, job_manager, metric_names, run_listing, run_store
from dashboard.tables import show_table

REFRESH_SECONDS = 2.0  # live parts of the page poll the store this often while a run is active

STEP_METRIC = "train/loss"  # shown first among the step metrics
CURVE_VIEWS = ("per epoch", "per step")

st.title("Runs")
manager = job_manager()
store = run_store()
data_dir = str(store.data_dir)


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
    runs = run_listing(data_dir)
    if runs.empty:
        st.info("No runs yet: set one up on the Setup page and press Launch.")
        return
    shown = runs[["id", "name", "status", "progress", "eta", "kd_test_acc", "gain_recovery"]]
    shown = shown.assign(eta=shown["eta"].where(shown["status"].isin(["queued", "running"])))  # none once over
    show_table(shown, key="runs_table",  # ETA in seconds, so that the column sorts by time left
               column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0,
                                                                          format="percent")})


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
    """Status, progress, ETA and live per-epoch and per-step curves of one run."""
    try:
        run = store.get_run(run_id)
    except KdlabError as err:
        st.warning(str(err))
        return
    a, b, c = st.columns(3)
    a.metric("status", run.status)
    b.metric("progress", f"{run.progress:.0%}")
    c.metric("ETA", (_eta(run.eta) if run.status in ("queued", "running") else "") or "-")
    st.progress(min(max(run.progress, 0.0), 1.0))
    if run.error:
        st.error(run.error)
    # Viewers watch: Cancel and Resume are drawn, and act, for the operator only.
    if may_operate() and run.status in ("queued", "running"):
        if st.button("Cancel", key=f"cancel_{run_id}"):
            manager.cancel(run_id)
            st.toast(f"cancelling {run_id}")
    elif may_operate() and run.resumable and run.dir_exists:
        if st.button("Resume from the last checkpoint", key=f"resume_{run_id}"):
            try:
                manager.resume(run_id)
                st.toast(f"{run_id} queued again")
            except KdlabError as err:
                st.error(str(err))
    live = run.status in ("queued", "running")
    version = run.updated  # changes with every progress update: a finished run's figures are built once
    # One set of curves at a time: the browser draws two charts, not three, on every refresh and page visit.
    view = st.segmented_control("Curves", CURVE_VIEWS, default=CURVE_VIEWS[0], key=f"curves_{run_id}",
                                help="Per epoch: val loss and accuracy of every model. Per step: the "
                                "metrics logged every train.log_every steps (train/loss, lr).")
    if view == CURVE_VIEWS[1]:
        step_curves(run_id, version, live)
    else:
        epoch_curves(run_id, version, live)
    st.caption(f"updated {time.strftime('%H:%M:%S')}")


def epoch_curves(run_id: str, version: float, live: bool) -> None:
    """Val loss and val accuracy of every model of the run, per epoch: two panels of one chart (one
    plot for the browser to lay out, one legend)."""
    fig = curve_figure(data_dir, run_id, "epoch", ("val/loss", "val/acc"), version)
    if figures.is_empty(fig):
        st.caption("Curves appear after the first epoch." if live else "This run recorded no epochs.")
        return
    st.plotly_chart(fig, width="stretch", key=f"epochs_{run_id}")


def step_curves(run_id: str, version: float, live: bool) -> None:
    """One step metric of every model of the run (train/loss first), as the store keeps it."""
    names = sorted(metric_names(data_dir, run_id, "step", version), key=lambda m: m != STEP_METRIC)
    if not names:
        st.caption("Step curves appear after the first logged steps (train.log_every)." if live
                   else "This run recorded no steps.")
        return
    metric = st.selectbox("Step metric", names, key=f"step_metric_{run_id}") if len(names) > 1 else names[0]
    st.plotly_chart(curve_figure(data_dir, run_id, "step", (metric,), version), width="stretch",
                    key=f"steps_{run_id}")


run_detail(run_id)
