"""Accuracy against teacher cost across distillation rounds (results.json's `teacher_budget`)."""

from __future__ import annotations

from typing import Any, Mapping

import plotly.graph_objects as go

from dashboard.figures.base import KIND_COLOURS, empty_figure, num, set_title

NEEDED = ("round", "seeds", "examples", "passes", "passes_cumulative", "val_acc", "test_acc", "gain_recovery")
COUNTED = {"targets": "teacher outputs used as targets (examples x views x teachers, each once)",
           "forwards": "teacher forwards run during training (every epoch's batches)"}


def budget_curve(report: Mapping[str, Any], scratch_acc: float | None = None,
                 ensemble_acc: float | None = None) -> go.Figure:
    """Mean test (and val) accuracy of the distilled students against the teacher forward passes one
    student has cost so far, one point per round; the scratch student at 0 passes, the ensemble dashed.

    report: results.json's `teacher_budget` (core.results.BudgetReport as a dict).
    """
    if not isinstance(report, Mapping) or "rounds" not in report:
        raise ValueError("budget_curve needs results.json's 'teacher_budget' dict (with 'rounds')")
    rounds = report["rounds"]
    if not rounds:
        return empty_figure("no distilled students yet", title="Accuracy against teacher cost")
    missing = [k for k in NEEDED if k not in rounds[0]]
    if missing:
        raise ValueError(f"teacher_budget rounds need {', '.join(missing)}")
    # Per student: the run's counts are summed over its seeds, each seed a lineage of its own.
    xs = [r["passes_cumulative"] / max(r["seeds"], 1) for r in rounds]
    hover = [f"round {r['round']}<br>{r['examples']} examples with a teacher target<br>"
             f"{r['passes'] / max(r['seeds'], 1):,.0f} passes this round, {x:,.0f} in all<br>"
             f"gain recovery {'-' if r['gain_recovery'] is None else format(r['gain_recovery'], '.2f')}"
             for r, x in zip(rounds, xs)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=[r["test_acc"] for r in rounds], name="KD student, test",
                             mode="lines+markers+text", text=[f"r{r['round']}" for r in rounds],
                             textposition="top center", hovertext=hover, hoverinfo="text+y",
                             line=dict(color=KIND_COLOURS["student kd"]), marker=dict(size=9)))
    if any(r["val_acc"] is not None for r in rounds):
        fig.add_trace(go.Scatter(x=xs, y=[num(r["val_acc"]) for r in rounds], name="KD student, val",
                                 mode="lines+markers", hovertext=hover, hoverinfo="text+y",
                                 line=dict(color=KIND_COLOURS["student kd"], dash="dot"), marker=dict(size=7)))
    if scratch_acc is not None:
        fig.add_trace(go.Scatter(x=[0], y=[scratch_acc], name="scratch student (no teacher), test", mode="markers",
                                 marker=dict(color=KIND_COLOURS["student scratch"], size=10, symbol="square"),
                                 hovertemplate="scratch student<br>test %{y:.4f}<extra></extra>"))
    if ensemble_acc is not None:
        fig.add_hline(y=ensemble_acc, line=dict(color=KIND_COLOURS["ensemble"], dash="dash"),
                      annotation_text=f"ensemble {ensemble_acc:.4f}", annotation_position="bottom right")
    share = float(report.get("share", 1.0))
    set_title(fig, f"Accuracy against teacher cost: {share:.0%} of the train examples per round",
              note=f"x: {COUNTED.get(report.get('counts'), 'teacher forward passes')}, per student")
    fig.update_layout(height=420, xaxis_title="teacher forward passes per student (cumulative)",
                      yaxis_title="accuracy", legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(rangemode="tozero")
    return fig
