"""Accuracy against cost for every method of a run, with the Pareto front."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import plotly.graph_objects as go

from dashboard.figures.base import KIND_COLOURS, PALETTE, empty_figure, set_title
from dashboard.figures.labels import Canvas, place_labels

# Cost columns of a comparison row (core.report.COLUMNS) and their axis titles.
COSTS = {
    "latency_ms": "latency (ms / image, batch 1)",
    "params": "parameters",
    "flops": "FLOPs / image",
    "peak_memory_mb": "peak memory (MB)",
    "train_seconds": "training time (s)",
}
SHORT = {"latency_ms": "latency", "params": "parameters", "flops": "FLOPs", "peak_memory_mb": "peak memory",
         "train_seconds": "training time"}  # in titles, which the axis title and its units complete
KIND_SYMBOLS = {"teacher": "circle", "ensemble": "diamond", "student": "square"}
PLOT_PX = 270            # height of the plot area (the figure grows with its title and legend around it)
CANVAS = Canvas(height=PLOT_PX - 20)  # where labels are placed: a little smaller than the real plot
AXIS_PX = 62             # x tick labels and the x axis title, under the plot
LEGEND_ROW_PX = 21
LEGEND_WIDTH_PX = 430    # a half-page chart's legend, at a 1400 px wide page
LEGEND_CHAR_PX = 6.0     # at the legend's 11 px font
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


@dataclass
class _Label:
    """One label: the rows of a cluster of touching markers, its text, and where it went."""

    rows: list[int]                 # highest accuracy first
    text: str                       # one line per point, top to bottom; coincident rows share a line
    box: tuple[float, float, float, float] | None = None   # px on CANVAS, None when it found no place
    number: int | None = None       # drawn instead of the text when the text found no place


def _clusters(xy: Sequence[tuple[float, float]]) -> list[list[int]]:
    """Groups of points whose markers touch (single linkage on CANVAS px), in order of first member."""
    parent = list(range(len(xy)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (xi, yi) in enumerate(xy):
        for j in range(i):
            if abs(xi - xy[j][0]) < CANVAS.marker_px and abs(yi - xy[j][1]) < CANVAS.marker_px:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(xy)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _names_line(names: list[str]) -> str:
    """Names of rows at one point on one line; a shared kind prefix once: 'ensemble: mean_prob, vote'."""
    prefixes = {n.split("/", 1)[0] for n in names}
    if len(names) > 1 and len(prefixes) == 1 and all("/" in n for n in names):
        return f"{prefixes.pop()}: " + ", ".join(n.split("/", 1)[1] for n in names)
    return ", ".join(names)


def _plan_labels(rows: Sequence[Mapping[str, Any]], x: str, x_range: tuple[float, float],
                 y_range: tuple[float, float]) -> list[_Label]:
    """Labels that overlap nothing: one per cluster of touching markers, naming its points top to bottom.

    Clusters holding a Pareto-front row are placed first, then students, teachers and ensembles. A
    label with no free place gets a number instead, where a number fits, and the cluster a legend
    entry "number names"; with no room even for that, the legend entry names it alone (hover text
    names each point too).
    """
    (x0, x1), (y0, y1) = x_range, y_range
    xy = [((math.log10(_cost(r, x)) - x0) / (x1 - x0) * CANVAS.width,
           (float(r["test_acc_mean"]) - y0) / (y1 - y0) * CANVAS.height) for r in rows]
    acc = [float(r["test_acc_mean"]) for r in rows]
    labels = []
    for members in _clusters(xy):
        members.sort(key=lambda i: -acc[i])
        lines: dict[float, list[str]] = {}
        for i in members:  # rows at the very same point share a line
            lines.setdefault(round(acc[i], 9), []).append(str(rows[i]["method"]))
        labels.append(_Label(members, "<br>".join(_names_line(names) for names in lines.values())))
    markers = [(CANVAS.marker(*xy[i]), k) for k, lab in enumerate(labels) for i in lab.rows]
    anchors = []
    for lab in labels:
        boxes = [m for m, k in markers if labels[k] is lab]
        anchors.append((min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes),
                        max(b[3] for b in boxes)))
    obstacles = []
    for (px, py), r in zip(xy, rows):  # error bars with their caps
        std = (_finite(r.get("test_acc_std")) or 0.0) / (y1 - y0) * CANVAS.height
        if std > 0:
            obstacles.append((px - 4, py - std, px + 4, py + std))
    front = [xy[i] for i in sorted((i for i, r in enumerate(rows) if any(r is f for f in pareto_front(rows, x))),
                                   key=lambda i: xy[i][0])]
    for (ax, ay), (bx, by) in zip(front, front[1:]):  # the step line: across, then up
        obstacles += [(ax, ay - 1, bx, ay + 1), (bx - 1, min(ay, by), bx + 1, max(ay, by))]
    on_front = {id(r) for r in pareto_front(rows, x)}
    rank = {"student": 0, "teacher": 1, "ensemble": 2}
    order = sorted(range(len(labels)), key=lambda k: (
        not any(id(rows[i]) in on_front for i in labels[k].rows), rank.get(rows[labels[k].rows[0]]["kind"], 3),
        -acc[labels[k].rows[0]]))
    taken: list = []
    boxes = place_labels(anchors, [lab.text for lab in labels], CANVAS, order=order, markers=markers,
                         obstacles=obstacles, taken=taken)
    number = 0
    for k in order:
        labels[k].box = boxes[k]
        if boxes[k] is None:  # a number instead, in placing order, where one fits
            tag = str(number + 1)
            fit = place_labels(anchors, [tag if j == k else "" for j in range(len(labels))], CANVAS, order=[k],
                               markers=markers, obstacles=obstacles, taken=taken)[k]
            if fit is not None:
                number += 1
                labels[k].box, labels[k].number = fit, number
    return labels


def tradeoff(rows: Sequence[Mapping[str, Any]], x: str = "latency_ms") -> go.Figure:
    """Test accuracy (mean, ± std error bars) against cost `x` on a log axis; markers by kind; Pareto front.

    rows: results.json's `comparison` list (core.report.row): method, kind (teacher, ensemble,
    student), test_acc_mean, test_acc_std, seeds and the cost column `x` (latency_ms, params, flops,
    peak_memory_mb or train_seconds). No rows gives the empty-state figure. Points are named by
    labels that overlap nothing (see `_plan_labels`); the rest by numbered legend entries.
    """
    _check(rows, x)
    if not rows:
        return empty_figure("no comparison yet: it is written when a run finishes")
    plotted = [r for r in rows if _cost(r, x) is not None and _finite(r["test_acc_mean"]) is not None]
    if not plotted:
        return empty_figure(f"no method has a measured {COSTS[x]} and accuracy to plot")
    kinds = list(dict.fromkeys(r["kind"] for r in plotted))
    kinds.sort(key=lambda k: list(KIND_SYMBOLS).index(k) if k in KIND_SYMBOLS else len(KIND_SYMBOLS))
    colours = {kind: KIND_COLOURS.get(kind, PALETTE[i % len(PALETTE)]) for i, kind in enumerate(kinds)}
    logs = [math.log10(_cost(r, x)) for r in plotted]
    pad = max(0.1, 0.08 * (max(logs) - min(logs)))  # decades of room for the labels at both ends
    x_range = (min(logs) - pad, max(logs) + pad)
    y_range = _accuracy_range(plotted)
    fig = go.Figure()
    for kind in kinds:
        group = [r for r in plotted if r["kind"] == kind]
        std = [_finite(r.get("test_acc_std")) or 0.0 for r in group]
        fig.add_trace(go.Scatter(
            x=[_cost(r, x) for r in group], y=[float(r["test_acc_mean"]) for r in group],
            error_y=dict(type="data", array=std, visible=True, thickness=1.2), mode="markers", name=str(kind),
            hovertext=[str(r["method"]) for r in group],
            marker=dict(symbol=KIND_SYMBOLS.get(kind, "x"), size=11, color=colours[kind]),
            customdata=[[s, r.get("seeds", "?")] for s, r in zip(std, group)],
            hovertemplate=(f"%{{hovertext}}<br>{COSTS[x]} %{{x:.4g}}<br>"
                           "test acc %{y:.4f} ± %{customdata[0]:.4f} (%{customdata[1]} seeds)<extra></extra>")))
    front = pareto_front(plotted, x)
    fig.add_trace(go.Scatter(
        x=[_cost(r, x) for r in front], y=[float(r["test_acc_mean"]) for r in front],
        mode="lines", line=dict(shape="hv", dash="dash", color="#444", width=1.5), name="Pareto front",
        text=[str(r["method"]) for r in front], hovertemplate="Pareto front: %{text}<extra></extra>"))
    labels = _plan_labels(plotted, x, x_range, y_range)
    (x0, x1), (y0, y1) = x_range, y_range
    drawn = [lab for lab in labels if lab.box is not None]
    centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in (lab.box for lab in drawn)]
    # Centred on its box, so a label sits where it was placed whatever plotly's own text offsets are.
    fig.add_trace(go.Scatter(
        x=[10 ** (x0 + cx / CANVAS.width * (x1 - x0)) for cx, _ in centres],
        y=[y0 + cy / CANVAS.height * (y1 - y0) for _, cy in centres],
        text=[lab.text if lab.number is None else str(lab.number) for lab in drawn], mode="text",
        textposition="middle center", textfont=dict(size=10), name="labels", showlegend=False, hoverinfo="skip"))
    for lab in sorted((lab for lab in labels if lab.box is None or lab.number is not None),
                      key=lambda lab: (lab.number is None, lab.number or 0)):
        head = plotted[lab.rows[0]]  # a legend entry of its own, with the marker of its top point
        names = lab.text.replace("<br>", ", ")
        fig.add_trace(go.Scatter(
            x=[None], y=[None], mode="markers", name=names if lab.number is None else f"{lab.number}  {names}",
            marker=dict(symbol=KIND_SYMBOLS.get(head["kind"], "x"), size=11, color=colours[head["kind"]]),
            hoverinfo="skip"))
    left_out = len(rows) - len(plotted)
    note = f"{left_out} method(s) without a measured {COSTS[x]} not shown" if left_out else None
    fig.update_xaxes(type="log", title=f"{COSTS[x]} (log scale)", range=list(x_range))
    fig.update_yaxes(title="test accuracy (mean ± std)", range=list(y_range))
    # The legend goes under the plot: beside it, it would take a third of a half-page chart's width.
    # The figure is as tall as its parts, so the plot area keeps the PLOT_PX the labels were placed in.
    set_title(fig, f"Accuracy against {SHORT[x]}: upper left is better", note=note)
    names = [str(t.name) for t in fig.data if t.showlegend is not False]
    # Entries in equal columns (as many as the longest name allows), so the rows are known in advance.
    columns = max(1, min(3, int(LEGEND_WIDTH_PX // (40 + LEGEND_CHAR_PX * max(map(len, names))))))
    rows_px = LEGEND_ROW_PX * math.ceil(len(names) / columns)
    fig.update_layout(height=fig.layout.margin.t + PLOT_PX + AXIS_PX + rows_px + 10,
                      margin=dict(l=10, r=10, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-AXIS_PX / PLOT_PX, xanchor="left", x=0,
                                  entrywidth=1 / columns, entrywidthmode="fraction", font=dict(size=11)))
    return fig


def _accuracy_range(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """The y range: every mean ± std, with a margin (fixed, so labels can be placed in known pixels)."""
    lows, highs = [], []
    for r in rows:
        acc, std = float(r["test_acc_mean"]), _finite(r.get("test_acc_std")) or 0.0
        lows.append(acc - std)
        highs.append(acc + std)
    lo, hi = min(lows), max(highs)
    pad = max(0.08 * (hi - lo), 0.005)
    return lo - pad, hi + pad
