"""Live training curves: one line per model draw, coloured by kind, downsampled for the browser.

A browser draws a few thousand points per line without stutter; longer series are cut to
`MAX_POINTS` per line by `core.store.frames.downsample` (first, last, and each bucket's min and max,
so a loss spike stays visible).
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# The store's downsampler, the only one: the store applies it to step series, this module to whatever
# frame it is given, so a series looks the same however it reached the figure.
from core.store.frames import MAX_POINTS, downsample
from dashboard.figures.base import KIND_COLOURS, empty_figure, is_empty

KIND_ORDER = ("teacher", "student scratch", "student kd", "student", "other")
DASHES = ("solid", "dot", "dash", "dashdot", "longdash", "longdashdot")


def source_kind(source: str) -> str:
    """'teacher', 'student scratch', 'student kd', 'student' or 'other' for an event source name."""
    parts = str(source).split("/")
    if parts[0] == "teacher":
        return "teacher"
    if parts[0] == "student":
        label = parts[1] if len(parts) > 1 else ""
        if label.startswith("scratch"):
            return "student scratch"
        if label.startswith("kd"):
            return "student kd"
        return "student"
    return "other"


def _model_of(source: str) -> str:
    """'teacher/resnet10t/s0' -> 'resnet10t': draws of one model share a dash pattern."""
    parts = str(source).split("/")
    return parts[1] if len(parts) > 2 else str(source)


def training_curves(frame: pd.DataFrame, metric: str, x: str | None = None,
                    max_points: int = MAX_POINTS) -> go.Figure:
    """One line per source of `metric` against epoch (or step), coloured by kind, each downsampled
    to at most `max_points` points.

    frame: long format with columns source (e.g. "teacher/resnet10t/s0", "student/kd-r1/s0"),
    metric (e.g. "val/acc"), value and `x` (default "epoch" when the frame has it, else "step").
    No rows for `metric` gives the empty-state figure.
    """
    if x is None:
        x = "epoch" if "epoch" in frame.columns else "step"
    missing = [c for c in ("source", "metric", "value", x) if c not in frame.columns]
    if missing:
        raise ValueError(f"training_curves needs columns source, metric, value and {x}; missing {missing}")
    rows = frame[(frame["metric"] == metric) & frame[x].notna()]
    if rows.empty:
        return empty_figure(f"no '{metric}' values yet", title=metric)
    rows = rows.assign(value=pd.to_numeric(rows["value"], errors="coerce"))
    rows = downsample(rows, x=x, y="value", by="source", max_points=max_points)  # sorted by x per source
    series_of = dict(tuple(rows.groupby("source", sort=False)))  # one pass, not one mask per source
    sources = sorted(series_of, key=lambda s: (KIND_ORDER.index(source_kind(s)), str(s)))
    dash_of: dict[tuple[str, str], str] = {}
    seen_kinds: set[str] = set()
    fig = go.Figure()
    for source in sources:
        series = series_of[source]
        xs, ys = series[x].to_numpy(), series["value"].to_numpy()
        kind = source_kind(source)
        model_key = (kind, _model_of(source))
        dash = dash_of.setdefault(model_key, DASHES[sum(k[0] == kind for k in dash_of) % len(DASHES)])
        fig.add_trace(go.Scatter(
            x=xs, y=ys, name=str(source), mode="lines" if len(xs) > 1 else "markers",
            line=dict(color=KIND_COLOURS[kind], dash=dash, width=1.6), marker=dict(color=KIND_COLOURS[kind]),
            legendgroup=kind, legendgrouptitle_text=None if kind in seen_kinds else kind,
            hovertemplate=f"{source}<br>{x} %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>"))
        seen_kinds.add(kind)
    # uirevision keeps the user's zoom while a live page redraws the figure with new points
    fig.update_layout(title=metric, xaxis_title=x, yaxis_title=metric, uirevision=metric, height=360,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(groupclick="toggleitem"))
    return fig


def training_curves_side_by_side(frame: pd.DataFrame, metrics: Sequence[str], x: str | None = None,
                                 max_points: int = MAX_POINTS, title: str | None = None) -> go.Figure:
    """`training_curves` of several metrics as panels of one figure with one legend.

    One plot instead of one per metric: the browser lays out axes, legend and toolbar once, which is
    most of what drawing a small chart costs. A legend entry toggles that model in every panel.
    """
    panels = [training_curves(frame, m, x, max_points) for m in metrics]
    drawn = [(m, p) for m, p in zip(metrics, panels) if not is_empty(p)]
    if not drawn:
        return empty_figure(f"no {' or '.join(repr(m) for m in metrics)} values yet", title=title)
    fig = make_subplots(rows=1, cols=len(drawn), subplot_titles=[m for m, _ in drawn], horizontal_spacing=0.08)
    for col, (metric, panel) in enumerate(drawn, start=1):
        for trace in panel.data:
            # one legend entry per model, toggling its line in every panel
            trace.update(legendgroup=trace.name, legendgrouptitle_text=None, showlegend=col == 1)
            fig.add_trace(trace, row=1, col=col)
        fig.update_xaxes(title=panel.layout.xaxis.title.text, row=1, col=col)
    fig.update_layout(title=title, uirevision="+".join(metrics), height=380,
                      margin=dict(l=10, r=10, t=60 if title else 40, b=10))
    return fig
