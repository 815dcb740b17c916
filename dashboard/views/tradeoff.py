"""Trade-off: accuracy against latency and parameters for teachers, ensembles and students."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.report import COLUMNS
from dashboard import figures
from dashboard.state import pick_run_with_results
from dashboard.tables import show_table

st.title("Trade-off")
st.caption("An ensemble costs the sum of its members; the Pareto front holds the models nothing beats on "
           "both accuracy and cost.")
run = pick_run_with_results("tradeoff_run")
if run is None:
    st.stop()
results = run.results
rows = results["comparison"]
summary = results.get("summary", {})
recovery = summary.get("gain_recovery", {})
a, b, c = st.columns(3)
a.metric("gain recovery (of the means)", "-" if recovery.get("of_means") is None else f"{recovery['of_means']:.2f}")
b.metric("student / teacher params", f"{summary.get('student_to_teacher_params', float('nan')):.2f}x")
c.metric("distilled from ensemble", summary.get("target_scheme", "?"))
left, right = st.columns(2)
left.plotly_chart(figures.tradeoff(rows, x="latency_ms"), width="stretch", key="tradeoff_latency")
right.plotly_chart(figures.tradeoff(rows, x="params"), width="stretch", key="tradeoff_params")
table = pd.DataFrame(rows)
table = table[[c for c in COLUMNS if c in table.columns]]
show_table(table, key="comparison_table")  # params in M, FLOPs in MFLOPs, ...; the CSV keeps the stored units
st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name=f"{run.id}-comparison.csv",
                   mime="text/csv", key="download_csv")
