"""A sweep's points side by side: KD and scratch test accuracy (mean +- std over seeds) per point."""

from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

from dashboard.figures.base import KIND_COLOURS, empty_figure

NEEDED = ("point", "kd_test_acc_mean", "kd_test_acc_std", "scratch_test_acc_mean", "scratch_test_acc_std",
          "ensemble_test_acc")


def point_labels(rows: Sequence[dict[str, Any]], axes: Sequence[str] | None = None) -> list[str]:
    """Short x labels: `lr=0.01 temperature=2` (each axis by its last name part) when the rows hold
    the axes' values, else the rows' full `point` text."""
    if axes and all(a in r for r in rows for a in axes):
        return [" ".join(f"{a.rsplit('.', 1)[-1]}={r[a]}" for a in axes) for r in rows]
    return [r["point"] for r in rows]


def sweep_chart(rows: Sequence[dict[str, Any]], best: int | None = None,
                axes: Sequence[str] | None = None) -> go.Figure:
    """Test accuracy per grid point: KD and scratch students with std error bars, the ensemble dashed.

    rows: sweep.json "rows" (core.sweep); best: the index of the val-best row, marked with a star;
    axes: sweep.json "axes", for short point labels.
    """
    if not rows:
        return empty_figure("no finished sweep points yet")
    missing = [k for k in NEEDED if k not in rows[0]]
    if missing:
        raise ValueError(f"sweep rows need {', '.join(missing)} (pass sweep.json's 'rows')")
    labels = point_labels(rows, axes)
    fig = go.Figure()
    for kind, name, colour in (("kd", "KD student", KIND_COLOURS["student kd"]),
                               ("scratch", "scratch student", KIND_COLOURS["student scratch"])):
        fig.add_trace(go.Scatter(
            x=labels, y=[r[f"{kind}_test_acc_mean"] for r in rows], name=name, mode="markers",
            marker=dict(color=colour, size=9),
            error_y=dict(type="data", array=[r[f"{kind}_test_acc_std"] for r in rows], visible=True),
            hovertemplate="%{x}<br>" + name + " %{y:.4f}<extra></extra>"))
    ensemble = rows[0]["ensemble_test_acc"]
    fig.add_hline(y=ensemble, line=dict(color=KIND_COLOURS["ensemble"], dash="dash"),
                  annotation_text=f"ensemble {ensemble:.4f}", annotation_position="top left")
    if best is not None and 0 <= best < len(rows):
        fig.add_trace(go.Scatter(x=[labels[best]], y=[rows[best]["kd_test_acc_mean"]], mode="markers",
                                 name="best by KD val accuracy",
                                 marker=dict(symbol="star", size=18, color="#ffbf00",
                                             line=dict(color="black", width=1)),
                                 hoverinfo="skip"))
    fig.update_layout(title="Sweep: test accuracy per point (mean +- std over seeds)", height=460,
                      xaxis_title=None, yaxis_title="test accuracy",
                      legend=dict(orientation="h", y=1.0, yanchor="bottom", x=1.0, xanchor="right"),
                      margin=dict(l=10, r=10, t=80, b=10))
    fig.update_xaxes(tickangle=-45)
    return fig
