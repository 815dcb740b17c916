"""Figures of per-example test outputs (test_outputs.safetensors): teacher weights, disagreement gallery."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.figures.base import PALETTE, empty_figure, image_trace


def weights_histogram(weights: ArrayLike, member_names: Sequence[str], bins: int = 40) -> go.Figure:
    """Overlaid histograms of the per-example weight (N, M) of each of the M members, with 1/M marked.

    weights: test_outputs' `weights/<scheme>` (e.g. weights/uncertainty), one row per test example,
    one column per member draw (the stack order of the `teacher/<label>/s<seed>` keys). No examples
    gives the empty-state figure.
    """
    w = np.asarray(weights, dtype=float)
    names = [str(n) for n in member_names]
    if w.ndim != 2:
        raise ValueError(f"weights must be (examples, members), got shape {w.shape}")
    if w.shape[1] != len(names):
        raise ValueError(f"weights have {w.shape[1]} members but {len(names)} member names were given")
    if w.shape[0] == 0 or not names:
        return empty_figure("no per-example weights to draw")
    finite = w[np.isfinite(w)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    # shared bin edges so the members' histograms line up; a constant weight gets one narrow bin
    size = (hi - lo) / bins if hi > lo else max(abs(hi), 1.0) / bins
    fig = go.Figure()
    for j, name in enumerate(names):
        col = w[:, j]
        fig.add_trace(go.Histogram(x=col, name=name, opacity=0.6, marker_color=PALETTE[j % len(PALETTE)],
                                   xbins=dict(start=lo - size / 2, end=hi + size / 2, size=size),
                                   hovertemplate=f"{name} (mean {np.nanmean(col):.3f})<br>weight %{{x}}"
                                                 "<br>%{y} examples<extra></extra>"))
    uniform = 1.0 / len(names)
    fig.add_vline(x=uniform, line=dict(color="#444", dash="dash"), annotation_text=f"uniform 1/M = {uniform:.3g}",
                  annotation_position="top")
    fig.update_layout(barmode="overlay", height=360,
                      title=f"Per-example weights: {w.shape[0]} examples, {len(names)} members "
                            "(each row sums to 1)",
                      xaxis_title="weight of the member on an example", yaxis_title="examples",
                      margin=dict(l=10, r=10, t=60, b=10))
    return fig


def disagreement_gallery(images: ArrayLike, probs_by_teacher: Mapping[str, ArrayLike], labels: ArrayLike,
                         class_names: Sequence[str], top_k: int = 3, columns: int = 3,
                         scores: ArrayLike | None = None, max_images: int = 16) -> go.Figure:
    """Small multiples: each test image beside a bar chart of every teacher's probability for its top classes.

    images: uint8 (N, C, H, W), C = 1 or 3 (test_outputs' `gallery/images`). probs_by_teacher:
    teacher name -> (N, K) probabilities for the same N images (softmax of `teacher/<label>/s<seed>`
    rows at `gallery/index`). labels: (N,) true class indices. The classes shown for an image are its
    `top_k` by mean teacher probability, plus the true class. scores: optional (N,) disagreement
    (e.g. `gallery/disagreement`): images are shown highest first with the score in the title.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    n, k = len(images), len(class_names)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    if not probs_by_teacher:
        raise ValueError("disagreement_gallery needs the probabilities of at least one teacher")
    probs = {str(t): np.asarray(p, dtype=float) for t, p in probs_by_teacher.items()}
    for t, p in probs.items():
        if p.shape != (n, k):
            raise ValueError(f"teacher '{t}' probabilities have shape {p.shape}, expected ({n}, {k}) "
                             "for the images and class names given")
        if p.size and (p.min() < -1e-6 or p.max() > 1 + 1e-6):
            raise ValueError(f"teacher '{t}' gives values outside [0, 1]: pass probabilities "
                             "(softmax of the logits), not logits")
    if n == 0:
        return empty_figure("no test images in the gallery")
    if scores is not None:
        scores = np.asarray(scores, dtype=float).reshape(-1)
        if len(scores) != n:
            raise ValueError(f"{len(scores)} scores for {n} images")
        order = np.argsort(-scores, kind="stable")
    else:
        order = np.arange(n)
    order = order[:max_images]
    cols = max(1, min(columns, len(order)))
    rows = math.ceil(len(order) / cols)
    titles = []
    for r in range(rows):
        for c in range(cols):
            slot = r * cols + c
            if slot < len(order):
                i = order[slot]
                score = f" · disagreement {scores[i]:.2f}" if scores is not None else ""
                titles += ["", f"true: {class_names[labels[i]]}{score}"]
            else:
                titles += ["", ""]
    fig = make_subplots(rows=rows, cols=2 * cols, column_widths=[0.3, 0.7] * cols, subplot_titles=titles,
                        horizontal_spacing=0.03, vertical_spacing=0.12 if rows > 1 else 0.1)
    teachers = list(probs)
    mean = np.mean([probs[t] for t in teachers], axis=0)  # (N, K)
    for slot, i in enumerate(order):
        r, c = divmod(slot, cols)
        fig.add_trace(image_trace(images[i]), row=r + 1, col=2 * c + 1)
        anchor = fig.data[-1].xaxis or "x"
        fig.update_xaxes(visible=False, row=r + 1, col=2 * c + 1)
        fig.update_yaxes(visible=False, scaleanchor=anchor, row=r + 1, col=2 * c + 1)
        shown = list(np.argsort(-mean[i], kind="stable")[:top_k])
        if labels[i] not in shown:
            shown.append(labels[i])
        ticks = [f"{class_names[j]}*" if j == labels[i] else str(class_names[j]) for j in shown]
        for ti, t in enumerate(teachers):
            fig.add_trace(go.Bar(x=ticks, y=probs[t][i, shown], name=t, legendgroup=t, showlegend=slot == 0,
                                 marker_color=PALETTE[ti % len(PALETTE)],
                                 hovertemplate=f"{t}<br>%{{x}}: %{{y:.3f}}<extra></extra>"),
                          row=r + 1, col=2 * c + 2)
        fig.update_yaxes(range=[0, 1], row=r + 1, col=2 * c + 2, tickfont=dict(size=9))
        fig.update_xaxes(tickfont=dict(size=10), row=r + 1, col=2 * c + 2)
    height = 190 * rows + 130
    plot_height = height - 70 - 60  # minus the top and bottom margins
    fig.update_layout(barmode="group", height=height, bargap=0.25,
                      title="Where the teachers disagree most (* marks the true class)",
                      margin=dict(l=10, r=10, t=70, b=60),
                      legend=dict(orientation="h", yanchor="top", y=-35 / plot_height))
    fig.update_annotations(font_size=11)
    return fig
