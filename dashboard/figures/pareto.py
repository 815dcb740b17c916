"""Accuracy against cost for every method of a run, with the Pareto front."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from dashboard.figures.base import KIND_COLOURS, PALETTE, empty_figure

# Cost columns of a comparison row (core.report.COLUMNS) and their axis titles.
COSTS = {
    "latency_ms": "latency (ms / image, batch 1)",
    "params": "parameters",
    "flops": "FLOPs / image",
    "peak_memory_mb": "peak memory (MB)",
    "train_seconds": "training time (s)",
}
KIND_SYMBOLS = {"teacher": "circle", "ensemble": "diamond", "student": "square"}
REQUIRED = ("method", "kind", "test_acc_mean")


def _check(rows: Sequence[Mapping[str, Any]], x: str) -> None:
    if x not in COSTS:
        raise ValueError(f"x must be one of {', '.join(COSTS)}; got '{x}'")
    for i, row in enumerate(rows):
        missing = [k for k in (*REQUIRED, x) if k not in row]
        if missing:
            raise ValueError(f"comparison row {i} ({row.get('method', '?')}) lacks {', '.join(missing)}: "
                             "pass results.json's `comparison` list")


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _cost(row: Mapping[str, Any], x: str) -> float | None:
    """The row's cost on a log axis: a finite positive number, else None (not plotted)."""
    cost = _finite(row.get(x))
    return cost if cost is not None and cost > 0 else None


def pareto_front(rows: Sequence[Mapping[str, Any]], x: str = "latency_ms") -> list[Mapping[str, Any]]:
    """The rows no other row beats (higher test_acc_mean at lower or equal cost `x`), cheapest first.

    Along the returned rows cost and accuracy both rise strictly. Rows without a finite positive cost
    or a finite accuracy are left out; of rows with the same cost and accuracy the first is kept.
    """
    _check(rows, x)
    points = [(_cost(r, x), _finite(r["test_acc_mean"]), i) for i, r in enumerate(rows)]
    points = sorted((p for p in points if p[0] is not None and p[1] is not None),
                    key=lambda p: (p[0], -p[1], p[2]))
    front, best = [], -math.inf
    for _, acc, i in points:
        if acc > best:
            front.append(rows[i])
            best = acc
    return front


def _labels(rows: Sequence[Mapping[str, Any]], x: str) -> tuple[list[str], list[str]]:
    """Text and text position per row so that labels of points at the same cost do not overlap.

    Rows at the same point share one label (joined names); rows at the same cost (ensembles all
    cost the sum of their members) alternate right and left, ordered by accuracy.
    """
    text = [str(r["method"]) for r in rows]
    position = ["top center"] * len(rows)
    points: dict[tuple[float, float], int] = {}
    for i, r in enumerate(rows):
        key = (round(math.log10(_cost(r, x)), 6), round(float(r["test_acc_mean"]), 9))
        if key in points:
            first = points[key]
            text[first] = f"{text[first]}, {text[i]}"
            text[i] = ""
        else:
            points[key] = i
    by_cost: dict[float, list[int]] = {}
    for (cost, _), i in points.items():
        by_cost.setdefault(cost, []).append(i)
    lowest, highest = min(by_cost), max(by_cost)
    for cost, group in by_cost.items():
        if len(group) > 1:
            for rank, i in enumerate(sorted(group, key=lambda j: float(rows[j]["test_acc_mean"]))):
                # at the plot's edges every label points inwards
                side = ("left" if cost == highest else "right" if cost == lowest
                        else "right" if rank % 2 == 0 else "left")
                position[i] = f"middle {side}"
    return text, position


def tradeoff(rows: Sequence[Mapping[str, Any]], x: str = "latency_ms") -> go.Figure:
    """Test accuracy (mean, ± std error bars) against cost `x` on a log axis; markers by kind; Pareto front.

    rows: results.json's `comparison` list (core.report.row): method, kind (teacher, ensemble,
    student), test_acc_mean, test_acc_std, seeds and the cost column `x` (latency_ms, params, flops,
    peak_memory_mb or train_seconds). No rows gives the empty-state figure.
    """
    _check(rows, x)
    if not rows:
        return empty_figure("no comparison yet: it is written when a run finishes")
    plotted = [r for r in rows if _cost(r, x) is not None and _finite(r["test_acc_mean"]) is not None]
    if not plotted:
        return empty_figure(f"no method has a measured {COSTS[x]} and accuracy to plot")
    kinds = list(dict.fromkeys(r["kind"] for r in plotted))
    kinds.sort(key=lambda k: list(KIND_SYMBOLS).index(k) if k in KIND_SYMBOLS else len(KIND_SYMBOLS))
    text, position = _labels(plotted, x)
    fig = go.Figure()
    for i, kind in enumerate(kinds):
        chosen = [j for j, r in enumerate(plotted) if r["kind"] == kind]
        group = [plotted[j] for j in chosen]
        std = [_finite(r.get("test_acc_std")) or 0.0 for r in group]
        fig.add_trace(go.Scatter(
            x=[_cost(r, x) for r in group], y=[float(r["test_acc_mean"]) for r in group],
            error_y=dict(type="data", array=std, visible=True, thickness=1.2),
            mode="markers+text", text=[text[j] for j in chosen], textposition=[position[j] for j in chosen],
            textfont=dict(size=10), name=str(kind), hovertext=[str(r["method"]) for r in group],
            marker=dict(symbol=KIND_SYMBOLS.get(kind, "x"), size=11,
                        color=KIND_COLOURS.get(kind, PALETTE[i % len(PALETTE)])),
            customdata=[[s, r.get("seeds", "?")] for s, r in zip(std, group)],
            hovertemplate=(f"%{{hovertext}}<br>{COSTS[x]} %{{x:.4g}}<br>"
                           "test acc %{y:.4f} ± %{customdata[0]:.4f} (%{customdata[1]} seeds)<extra></extra>")))
    front = pareto_front(plotted, x)
    fig.add_trace(go.Scatter(
        x=[_cost(r, x) for r in front], y=[float(r["test_acc_mean"]) for r in front],
        mode="lines", line=dict(shape="hv", dash="dash", color="#444", width=1.5), name="Pareto front",
        text=[str(r["method"]) for r in front], hovertemplate="Pareto front: %{text}<extra></extra>"))
    left_out = len(rows) - len(plotted)
    if left_out:
        fig.add_annotation(text=f"{left_out} method(s) without a measured {COSTS[x]} not shown",
                           xref="paper", yref="paper", x=1, y=-0.18, showarrow=False, xanchor="right",
                           font=dict(size=11))
    logs = [math.log10(_cost(r, x)) for r in plotted]
    pad = max(0.1, 0.08 * (max(logs) - min(logs)))  # decades of room for the labels at both ends
    fig.update_xaxes(type="log", title=f"{COSTS[x]} (log scale)", range=[min(logs) - pad, max(logs) + pad])
    fig.update_yaxes(title="test accuracy (mean ± std over seeds)")
    fig.update_layout(title=f"Accuracy against {COSTS[x]}: upper left is better", height=420,
                      margin=dict(l=10, r=10, t=40, b=40))
    return fig
