"""Compare: runs side by side (config differences and metrics); load a run's config into Setup."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import KdlabError
from dashboard import figures
from dashboard.state import run_store

st.title("Compare")
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
st.dataframe(metrics, hide_index=True, width="stretch", key="compare_metrics")
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
    st.switch_page("pages/setup.py")
