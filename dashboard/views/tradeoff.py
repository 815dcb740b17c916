"""Trade-off: accuracy against latency and parameters for teachers, ensembles and students."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.report import COLUMNS
from dashboard import figures
from dashboard.export_panel import export_panel, exported_points
from dashboard.state import pick_run_with_results
from dashboard.tables import show_table

st.title("Trade-off")
st.caption("An ensemble costs the sum of its members; the Pareto front holds the models nothing beats on "
           "both accuracy and cost.")
picked = pick_run_with_results("tradeoff_run")
if picked is None:
    st.stop()
run, results = picked
rows = [r.model_dump() for r in results.comparison]
summary = results.summary
recovery = summary.gain_recovery.of_means
a, b, c = st.columns(3)
a.metric("gain recovery (of the means)", "-" if recovery is None else f"{recovery:.2f}")
b.metric("student / teacher params", f"{summary.student_to_teacher_params:.2f}x")
c.metric("distilled from ensemble", summary.target_scheme)
shipped = exported_points(run.run_dir)  # what the run's exports measured in the runtimes they ship in
left, right = st.columns(2)
left.plotly_chart(figures.tradeoff(rows + shipped, x="latency_ms"), width="stretch", key="tradeoff_latency")
right.plotly_chart(figures.tradeoff(rows + shipped, x="params"), width="stretch", key="tradeoff_params")
if shipped:
    st.caption("'shipped' points: the run's exports, timed in onnxruntime (fp32, int8) on this machine at export "
               "time, with their test accuracy as verified on the test split.")
table = pd.DataFrame(rows)
table = table[[c for c in COLUMNS if c in table.columns]]
show_table(table, key="comparison_table")  # params in M, FLOPs in MFLOPs, ...; the CSV keeps the stored units
st.download_button("Download CSV", table.to_csv(index=False).encode(), file_name=f"{run.id}-comparison.csv",
                   mime="text/csv", key="download_csv")

budget = results.teacher_budget  # distill.teacher_budget: teacher cost per round (absent in older runs)
if budget is not None and budget.shown:
    st.subheader("Teacher cost across rounds")
    scratch = results.scratch()
    target = results.ensemble()
    st.plotly_chart(figures.budget_curve(budget.model_dump(),
                                         scratch_acc=sum(s.test_acc for s in scratch) / len(scratch) if scratch
                                         else None,
                                         ensemble_acc=None if target is None else target.test_acc),
                    width="stretch", key="teacher_budget")
    st.caption(f"Each round queries the teachers on {budget.per_round} of {budget.train_examples} train examples "
               f"({budget.share:.0%}): round 1 a stratified draw, later rounds where the student's residual is "
               "largest; the others learn from their labels. "
               + ("Passes count teacher outputs used as targets (examples x views x teachers, each once); the "
                  "shared logit cache itself holds every train example." if budget.counts == "targets" else
                  "Passes count the teacher forwards run while the students trained."))

export_panel(run)
