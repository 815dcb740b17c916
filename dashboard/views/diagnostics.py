"""Diagnostics: why the ensemble helps (bias, variance, diversity) and what the student inherits."""

from __future__ import annotations

import streamlit as st

from dashboard import figures
from dashboard.state import pick_run_with_results, test_outputs



st.title("Diagnostics")
picked = pick_run_with_results("diagnostics_run")
if picked is None:
    st.stop()
run, results = picked
if results.diagnostics is None or not results.diagnostics.computed:
    st.warning(f"This run has no diagnostics ({results.diagnostics.error if results.diagnostics else 'not computed'}).")
    st.stop()
diag = results.diagnostics.detail()
if diag["combiners"]["mean_logit"].get("reason"):
    st.info(diag["combiners"]["mean_logit"]["reason"])
st.plotly_chart(figures.bvd_bars(diag), width="stretch", key="bvd")
left, right = st.columns(2)
left.plotly_chart(figures.diversity_growth(diag), width="stretch", key="growth")
right.plotly_chart(figures.student_variance(diag), width="stretch", key="student_variance")
left, right = st.columns(2)
left.plotly_chart(figures.error_correlation_heatmap(diag), width="stretch", key="error_correlation")
right.plotly_chart(figures.reliability_diagram(diag), width="stretch", key="reliability")

outputs = test_outputs(str(run.run_dir), results.artifacts.get("test_outputs", ""))
if outputs is None:
    st.caption("Per-example outputs (test_outputs.safetensors) are missing for this run.")
    st.stop()
members = [t.name for t in results.teachers]
# One histogram per scheme with per-example member weights (weights/uncertainty, weights/bradley_terry, ...).
for key in (k for k in outputs if k.startswith("weights/")):
    scheme = key.removeprefix("weights/")
    fig = figures.weights_histogram(outputs[key], members)
    fig.update_layout(title=f"{scheme}: {fig.layout.title.text}" if fig.layout.title.text else scheme)
    st.plotly_chart(fig, width="stretch", key=f"weights_hist_{scheme}")
teacher_keys = [k for k in outputs if k.startswith("teacher/")]
probs = {k.removeprefix("teacher/"): figures.softmax(outputs[k][outputs["gallery/index"]]) for k in teacher_keys}
class_names = results.class_names or [str(i) for i in range(results.dataset.num_classes)]
st.subheader("Where the teachers disagree most")
st.plotly_chart(figures.disagreement_gallery(outputs["gallery/images"], probs,
                                             outputs["labels"][outputs["gallery/index"]], class_names,
                                             scores=outputs["gallery/disagreement"]),
                width="stretch", key="gallery")
