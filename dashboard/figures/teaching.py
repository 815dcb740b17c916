"""Small interactive figures for the Learn page: each illustrates one idea with a few numbers."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.figures.base import KIND_COLOURS


def softmax(z, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) over the last axis, computed stably."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(z, dtype=float) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_temperature(logits: Sequence[float], temperature: float,
                        class_names: Sequence[str] | None = None) -> go.Figure:
    """Bars of softmax(z / T) for one logit vector, with T = 1 as markers; entropy in the title."""
    z = np.asarray(logits, dtype=float)
    if z.ndim != 1 or z.size < 2:
        raise ValueError(f"logits must be one vector of at least 2 classes, got shape {z.shape}")
    names = [str(c) for c in class_names] if class_names is not None else [f"class {i}" for i in range(z.size)]
    if len(names) != z.size:
        raise ValueError(f"{len(names)} class names for {z.size} logits")
    p_t, p_1 = softmax(z, temperature), softmax(z)
    entropy = float(-(p_t * np.log(np.clip(p_t, 1e-300, None))).sum())
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=p_t, name=f"softmax(z / {temperature:g})",
                         marker_color=KIND_COLOURS["teacher"], hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=names, y=p_1, mode="markers", name="T = 1",
                             marker=dict(symbol="line-ew-open", size=30, color="#d62728", line=dict(width=3)),
                             hovertemplate="%{x}: %{y:.3f} at T = 1<extra></extra>"))
    fig.update_yaxes(range=[0, 1], title="probability")
    fig.update_layout(title=f"T = {temperature:g}: entropy {entropy:.2f} nats (uniform: {np.log(z.size):.2f})",
                      height=320, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def averaging_demo(members: int, bias: float = 0.5, noise: float = 1.0, correlation: float = 0.0,
                   trials: int = 4000, seed: int = 0, max_members: int = 20) -> go.Figure:
    """Averaging M noisy predictors of a target 0: the spread shrinks, the offset (bias) stays.

    Each member predicts bias + noise * e_i with corr(e_i, e_j) = correlation. Left: predictions of
    one member and of the average of `members`, over `trials` simulated training draws. Right:
    bias^2 and variance of the average, variance = noise^2 (rho + (1 - rho) / M), for M = 1..max_members.
    """
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], got {correlation}")
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((trials, 1))
    own = rng.standard_normal((trials, members))
    preds = bias + noise * (np.sqrt(correlation) * shared + np.sqrt(1.0 - correlation) * own)
    single, average = preds[:, 0], preds.mean(axis=1)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45],
                        subplot_titles=("predictions over training draws", "squared error of the average"))
    fig.add_trace(go.Histogram(x=single, name="one member", opacity=0.55, marker_color="#9d9d9d",
                               nbinsx=60, histnorm="probability density"), row=1, col=1)
    fig.add_trace(go.Histogram(x=average, name=f"average of {members}", opacity=0.7,
                               marker_color=KIND_COLOURS["ensemble"], nbinsx=60,
                               histnorm="probability density"), row=1, col=1)
    fig.add_vline(x=0.0, line=dict(color="#111", width=2), annotation_text="target",
                  annotation_position="top left" if bias >= 0 else "top right", row=1, col=1)
    fig.add_vline(x=bias, line=dict(color="#d62728", dash="dash"), annotation_text="bias",
                  annotation_position="top right" if bias >= 0 else "top left", row=1, col=1)
    m = np.arange(1, max(max_members, members) + 1)
    variance = noise ** 2 * (correlation + (1.0 - correlation) / m)
    fig.add_trace(go.Scatter(x=m, y=np.full(m.shape, bias ** 2), name="bias²", mode="lines",
                             line=dict(color="#d62728")), row=1, col=2)
    fig.add_trace(go.Scatter(x=m, y=variance, name="variance", mode="lines", line=dict(color="#f58518")),
                  row=1, col=2)
    fig.add_trace(go.Scatter(x=[members], y=[float(average.var())], name=f"variance simulated (M = {members})",
                             mode="markers", marker=dict(color="#f58518", size=11, symbol="circle-open",
                                                         line=dict(width=2))), row=1, col=2)
    fig.update_xaxes(title="prediction", row=1, col=1)
    fig.update_xaxes(title="members M", row=1, col=2)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_layout(barmode="overlay", height=360, margin=dict(l=10, r=10, t=70, b=10),
                      title=f"mean of the average {average.mean():.2f} (bias {bias:g}); its variance "
                            f"{average.var():.3f} vs one member {single.var():.3f}")
    return fig


def _kl_binary(p, q) -> np.ndarray:
    """KL(p || q) in nats between Bernoulli distributions with P(A) = p and q (arrays broadcast)."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def centroids(member_probs: Sequence[float]) -> dict[str, float]:
    """P(A) of the normalised geometric mean (= softmax of the mean logit) and of the arithmetic mean."""
    p = np.asarray(member_probs, dtype=float)
    if p.ndim != 1 or p.size < 1 or np.any(p <= 0) or np.any(p >= 1):
        raise ValueError("member_probs must be probabilities of class A strictly between 0 and 1")
    logit = np.log(p) - np.log1p(-p)
    return {"geometric": float(1.0 / (1.0 + np.exp(-logit.mean()))), "arithmetic": float(p.mean())}


def centroid_demo(member_probs: Sequence[float]) -> go.Figure:
    """Two classes: mean_i KL(q || p_i) is smallest at softmax(mean logit), mean_i KL(p_i || q) at the mean.

    member_probs: each member's probability of class A, strictly between 0 and 1.
    """
    c = centroids(member_probs)
    p = np.asarray(member_probs, dtype=float)
    q = np.linspace(0.001, 0.999, 999)
    reverse = _kl_binary(q[:, None], p[None, :]).mean(axis=1)  # mean_i KL(q || p_i)
    forward = _kl_binary(p[None, :], q[:, None]).mean(axis=1)  # mean_i KL(p_i || q)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=q, y=reverse, name="mean_i KL(q ‖ p_i): diversity around q", mode="lines",
                             line=dict(color=KIND_COLOURS["ensemble"])))
    fig.add_trace(go.Scatter(x=q, y=forward, name="mean_i KL(p_i ‖ q)", mode="lines",
                             line=dict(color="#9d9d9d", dash="dash")))
    fig.add_trace(go.Scatter(x=p, y=np.zeros_like(p), name="members", mode="markers",
                             marker=dict(color="#111", size=10, symbol="line-ns-open", line=dict(width=2))))
    geometric_right = c["geometric"] >= c["arithmetic"]  # labels on the outer sides, so they never overlap
    fig.add_vline(x=c["geometric"], line=dict(color=KIND_COLOURS["ensemble"]),
                  annotation_text=f"softmax(mean logit) {c['geometric']:.3f}",
                  annotation_position="top right" if geometric_right else "top left")
    fig.add_vline(x=c["arithmetic"], line=dict(color="#9d9d9d", dash="dash"),
                  annotation_text=f"mean prob {c['arithmetic']:.3f}",
                  annotation_position="top left" if geometric_right else "top right")
    top = float(np.nanmax(np.minimum(np.concatenate([reverse, forward]), 3.0)))
    fig.update_xaxes(title="q = ensemble probability of class A", range=[0, 1])
    fig.update_yaxes(title="nats", range=[0, min(top, 3.0) * 1.05])
    fig.update_layout(height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25),
                      title="Which combined prediction is closest to the members?")
    return fig


def kd_loss_parts(teacher_logits: Sequence[float], student_logits: Sequence[float], label: int,
                  temperature: float, alpha: float) -> dict[str, float]:
    """Hinton's loss on one example: kd = T² KL(p_T || q_T), ce = CE(q_1, y), loss = alpha kd + (1 - alpha) ce."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    zt, zs = np.asarray(teacher_logits, dtype=float), np.asarray(student_logits, dtype=float)
    if zt.shape != zs.shape or zt.ndim != 1 or not 0 <= label < zt.size:
        raise ValueError("teacher and student logits must be vectors of the same length, label a class index")
    p, q = softmax(zt, temperature), softmax(zs, temperature)
    # p log(p / q) with 0 log 0 = 0: a class the teacher gives no mass adds nothing
    log_p, log_q = np.log(np.clip(p, 1e-300, None)), np.log(np.clip(q, 1e-300, None))
    kd = temperature ** 2 * float(np.sum(np.where(p > 0, p * (log_p - log_q), 0.0)))
    ce = float(-np.log(softmax(zs)[label]))
    return {"kd": kd, "ce": ce, "loss": alpha * kd + (1.0 - alpha) * ce}


def kd_gradient_scale(teacher_logits: Sequence[float], student_logits: Sequence[float],
                      temperature: float | None = None, temperatures: Sequence[float] | None = None) -> go.Figure:
    """Size of the soft-target gradient on the student's logits against T, with and without the T² factor.

    d KL(p_T || q_T) / dz_s = (q_T - p_T) / T, which shrinks like 1 / T² for large T;
    d [T² KL(p_T || q_T)] / dz_s = T (q_T - p_T) stays about the same, so alpha keeps its meaning.
    """
    zt, zs = np.asarray(teacher_logits, dtype=float), np.asarray(student_logits, dtype=float)
    if zt.shape != zs.shape or zt.ndim != 1:
        raise ValueError("teacher and student logits must be vectors of the same length")
    ts = np.asarray(temperatures if temperatures is not None else np.geomspace(1, 20, 60), dtype=float)
    gap = np.array([np.linalg.norm(softmax(zs, t) - softmax(zt, t)) for t in ts])  # ||q_T - p_T||
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ts, y=gap / ts, name="KL only: ‖q_T − p_T‖ / T", mode="lines",
                             line=dict(color="#9d9d9d", dash="dash")))
    fig.add_trace(go.Scatter(x=ts, y=gap * ts, name="T² · KL: T ‖q_T − p_T‖", mode="lines",
                             line=dict(color=KIND_COLOURS["student kd"])))
    if temperature is not None:
        g = float(np.linalg.norm(softmax(zs, temperature) - softmax(zt, temperature)))
        fig.add_trace(go.Scatter(x=[temperature, temperature], y=[g / temperature, g * temperature],
                                 name=f"T = {temperature:g}", mode="markers",
                                 marker=dict(color="#111", size=9)))
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if ts.min() <= t <= ts.max()]
    fig.update_xaxes(type="log", title="temperature T", tickvals=ticks or None)
    fig.update_yaxes(type="log", title="gradient norm on the student's logits")
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10),
                      title="Soft-target gradient size: T² undoes the 1/T² shrink")
    return fig


def deployment_cost(members: int, student_fraction: float = 0.25) -> go.Figure:
    """Relative cost of an ensemble of M equal teachers and of a student of `student_fraction` one teacher.

    Units of one teacher: inference compute and memory (ensemble M, student f), training compute
    (ensemble M; distilled student M + f, since the teachers are trained first).
    """
    if members < 1 or student_fraction <= 0:
        raise ValueError("members must be >= 1 and student_fraction > 0")
    measures = ["inference compute", "weights in memory", "training compute"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=measures, y=[members, members, members], name=f"ensemble of {members}",
                         marker_color=KIND_COLOURS["ensemble"]))
    fig.add_trace(go.Bar(x=measures, y=[student_fraction, student_fraction, members + student_fraction],
                         name="distilled student", marker_color=KIND_COLOURS["student kd"]))
    fig.update_yaxes(title="in units of one teacher")
    fig.update_layout(barmode="group", height=300, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"Cost: {members} teachers vs one student at {student_fraction:g} of a teacher")
    return fig
