"""Live training curves: one line per model draw, coloured by kind, downsampled for the browser."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
import plotly.graph_objects as go

from dashboard.figures.base import KIND_COLOURS, empty_figure

MAX_POINTS = 2_000  # per series: a browser draws a few thousand points per line without stutter
KIND_ORDER = ("teacher", "student scratch", "student kd", "student", "other")
DASHES = ("solid", "dot", "dash", "dashdot", "longdash", "longdashdot")


def _lttb_indices(x: np.ndarray, y: np.ndarray, n_out: int) -> np.ndarray:
    """Largest-triangle-three-buckets (Steinarsson 2013): indices of n_out points, first and last kept.

    The interior points are cut into n_out - 2 buckets; from each bucket the point forming the largest
    triangle with the point kept before it and the mean of the next bucket is kept, so peaks and
    dips survive where a stride would skip them.
    """
    n = len(x)
    edges = np.linspace(1, n - 1, n_out - 1).astype(np.int64)  # n_out - 2 buckets over 1 .. n - 2
    keep = np.empty(n_out, dtype=np.int64)
    keep[0], keep[-1] = 0, n - 1
    a = 0
    for b in range(n_out - 2):
        lo, hi = edges[b], edges[b + 1]
        if b + 2 < len(edges):
            nxt = slice(edges[b + 1], edges[b + 2])
            cx, cy = x[nxt].mean(), y[nxt].mean()
        else:
            cx, cy = x[-1], y[-1]
        area = np.abs((x[a] - cx) * (y[lo:hi] - y[a]) - (x[a] - x[lo:hi]) * (cy - y[a]))
        # NaN values (a diverged loss) give NaN areas: never preferred, but a bucket of NaNs keeps one
        a = lo + int(np.argmax(np.nan_to_num(area, nan=-1.0)))
        keep[b + 1] = a
    return keep


def downsample(x: ArrayLike, y: ArrayLike, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points of the series (x ascending) by LTTB; first and last point always kept.

    A series that is already short enough comes back unchanged (as arrays).
    """
    x, y = np.asarray(x), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"downsample needs two 1-D arrays of the same length, got {x.shape} and {y.shape}")
    if max_points < 3:
        raise ValueError(f"max_points must be at least 3 (first, last and one more point), got {max_points}")
    if len(x) <= max_points:
        return x.copy(), y.copy()
    xf = x.astype(float)
    if np.any(np.diff(xf) < 0):
        raise ValueError("downsample needs x in ascending order; sort the series by x first")
    keep = _lttb_indices(xf, y, max_points)
    return x[keep], y[keep]


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
    """One line per source of `metric` against epoch (or step), coloured by kind, each downsampled.

    frame: long format with columns source (e.g. "teacher/resnet10t/s0", "student/kd-r1/s0"),
    metric (e.g. "val/acc"), value and `x` (default "epoch" when the frame has it, else "step").
    No rows for `metric` gives the empty-state figure.
    """
    if x is None:
        x = "epoch" if "epoch" in frame.columns else "step"
    missing = [c for c in ("source", "metric", "value", x) if c not in frame.columns]
    if missing:
        raise ValueError(f"training_curves needs columns source, metric, value and {x}; missing {missing}")
    rows = frame[frame["metric"] == metric]
    rows = rows[rows[x].notna()]
    if rows.empty:
        return empty_figure(f"no '{metric}' values yet", title=metric)
    sources = sorted(rows["source"].unique(), key=lambda s: (KIND_ORDER.index(source_kind(s)), str(s)))
    dash_of: dict[tuple[str, str], str] = {}
    seen_kinds: set[str] = set()
    fig = go.Figure()
    for source in sources:
        series = rows[rows["source"] == source].sort_values(x, kind="stable")
        xs, ys = downsample(series[x].to_numpy(), pd.to_numeric(series["value"], errors="coerce").to_numpy(),
                            max_points)
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
