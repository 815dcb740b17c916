"""Diagnostics figures from the `diagnostics` dict of results.json (core.diagnostics.diagnose output).

Bias, variance and diversity per combiner, diversity as members are added, the students' spread
over seeds, pairwise error correlation and disagreement, reliability diagrams. A dict that recorded
an error (`{"error": ...}`) or has nothing to draw gives the empty-state figure.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.figures.base import KIND_COLOURS, PALETTE, diag_problem, empty_figure, num, nums, set_title, wrap

COMBINER_ORDER = ("mean_logit", "mean_prob", "vote")
LOSS_LABELS = {"cross_entropy": "cross-entropy (nats)", "brier": "Brier score", "zero_one": "0/1 loss (effects)"}
TERM_COLOURS = {"bias": "#4c78a8", "variance": "#f58518", "member loss": "#9d9d9d", "− diversity": "#54a24b",
                "ensemble loss": "#111111"}
STUDENT_COLOURS = {"scratch": KIND_COLOURS["student scratch"], "kd": KIND_COLOURS["student kd"]}


def _ordered(names: Sequence[str], first: Sequence[str]) -> list[str]:
    return [n for n in first if n in names] + [n for n in names if n not in first]


def _reason_note(fig: go.Figure, reason: str, y: float = -0.22) -> None:
    fig.add_annotation(text=wrap(reason, 110), xref="paper", yref="paper", x=0, y=y, xanchor="left",
                       yanchor="top", showarrow=False, align="left", font=dict(size=11))


def bvd_bars(diag: Mapping[str, Any], title: str | None = None) -> go.Figure:
    """Bias + variance stacked up, diversity drawn negative, ensemble loss as a marker, one panel per combiner.

    diag: the diagnostics dict (or one student's entry of diag["students"]): `combiners` maps
    mean_logit / mean_prob / vote to {loss_name, terms: {loss, member_loss, bias, variance,
    diversity}, reason}. The bar for diversity is -diversity, so the bars sum to the loss; a negative
    diversity-effect (majority vote hurting) is a bar above zero. With one draw per member bias and
    variance are None: the member loss is drawn whole and the reason is shown under the panels.
    """
    problem = diag_problem(diag)
    if problem:
        return empty_figure(problem, title=title)
    combiners = diag.get("combiners") or {}
    if not combiners:
        return empty_figure("no bias-variance-diversity terms in these diagnostics", title=title)
    names = _ordered(list(combiners), COMBINER_ORDER)
    titles = [f"{c}: {LOSS_LABELS.get(combiners[c].get('loss_name'), combiners[c].get('loss_name', ''))}"
              for c in names]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=titles, horizontal_spacing=0.09)
    shown: set[str] = set()
    reasons: list[str] = []

    def bar(name: str, value: float, col: int, label: str, hover: str) -> None:
        fig.add_trace(go.Bar(x=[label], y=[value], name=name, legendgroup=name, showlegend=name not in shown,
                             marker_color=TERM_COLOURS[name], hovertemplate=f"{hover}<extra></extra>"),
                      row=1, col=col)
        shown.add(name)

    for col, c in enumerate(names, start=1):
        dec = combiners[c]
        t = dec.get("terms") if isinstance(dec, Mapping) else None
        if not isinstance(t, Mapping):
            raise ValueError(f"combiner '{c}' has no `terms` dict: pass the diagnostics dict of results.json")
        effect = "-effect" if dec.get("loss_name") == "zero_one" else ""
        bias, variance, diversity = num(t.get("bias")), num(t.get("variance")), num(t.get("diversity"))
        if not math.isnan(bias) and not math.isnan(variance):
            bar("bias", bias, col, c, f"bias{effect} {bias:.4f}")
            bar("variance", variance, col, c, f"variance{effect} {variance:.4f}")
        else:
            member = num(t.get("member_loss"))
            bar("member loss", member, col, c, f"mean member loss {member:.4f} (bias + variance)")
            if dec.get("reason"):
                reasons.append(dec["reason"])
        # only an effect can be negative; a divergence-based diversity is >= 0 up to rounding
        hurts = " (negative: the vote is worse than its average member)" if effect and diversity < 0 else ""
        bar("− diversity", -diversity, col, c, f"diversity{effect} {diversity:.4f}{hurts}")
        loss = num(t.get("loss"))
        fig.add_trace(go.Scatter(x=[c], y=[loss], mode="markers", name="ensemble loss",
                                 legendgroup="ensemble loss", showlegend="ensemble loss" not in shown,
                                 marker=dict(symbol="diamond", size=13, color=TERM_COLOURS["ensemble loss"],
                                             line=dict(color="white", width=1)),
                                 hovertemplate=f"ensemble loss {loss:.4f}<extra></extra>"), row=1, col=col)
        shown.add("ensemble loss")
    # relative: positive terms stack up from 0, negative ones down from 0, so every term keeps its sign
    fig.update_layout(barmode="relative", height=380,
                      title=title or "Ensemble loss = bias + variance − diversity",
                      margin=dict(l=10, r=10, t=60, b=110 if reasons else 30))
    fig.update_yaxes(zeroline=True, zerolinecolor="#888")
    if reasons:
        _reason_note(fig, diag.get("reason") or reasons[0])
    return fig


def diversity_growth(diag: Mapping[str, Any]) -> go.Figure:
    """Ensemble loss, mean member loss and diversity (cross-entropy, logit average) as members are added.

    diag["growth"]: {by: "val_nll" | "given" | "member_order", order: [names], rows: [{members,
    added, loss, member_loss, diversity, ...}]}, best member first when ordered by val NLL.
    """
    problem = diag_problem(diag)
    if problem:
        return empty_figure(problem)
    growth = diag.get("growth") or {}
    rows = growth.get("rows") or []
    if not rows:
        return empty_figure("no diversity-growth rows in these diagnostics")
    x = [int(r["members"]) for r in rows]
    added = [str(r["added"]) for r in rows]
    fig = go.Figure()
    for term, name, colour, dash in (("loss", "ensemble loss", "#111111", "solid"),
                                     ("member_loss", "mean member loss", "#9d9d9d", "dash"),
                                     ("diversity", "diversity", TERM_COLOURS["− diversity"], "solid")):
        fig.add_trace(go.Scatter(x=x, y=nums(r.get(term) for r in rows), name=name, mode="lines+markers",
                                 line=dict(color=colour, dash=dash), customdata=added,
                                 hovertemplate=f"%{{x}} members (+%{{customdata}})<br>{name} %{{y:.4f}}"
                                               "<extra></extra>"))
    by = {"val_nll": "best validation NLL first", "given": "in the given order",
          "member_order": "in config order"}.get(growth.get("by"), "")
    fig.update_xaxes(title="members in the ensemble", tickvals=x,
                     ticktext=[f"{m}<br>+{a}" for m, a in zip(x, added)])
    fig.update_yaxes(title="cross-entropy (nats)", rangemode="tozero")
    fig.update_layout(height=380, margin=dict(l=10, r=10, b=10))
    return set_title(fig, f"Adding members ({by}): loss = member loss − diversity")  # a half-page chart


def student_variance(diag: Mapping[str, Any], combiner: str = "mean_logit") -> go.Figure:
    """Each student's loss, bias and variance across its seeds under `combiner` (KD against scratch).

    diag["students"]: name (e.g. "scratch", "kd") -> {seeds, reason, combiners: {combiner:
    {terms: {loss, bias, variance, ...}}}}. Variance gets its own panel: it is often 100x smaller
    than bias. Students with one seed have no bias or variance; their reason is shown.
    """
    problem = diag_problem(diag)
    if problem:
        return empty_figure(problem)
    students = diag.get("students") or {}
    if not students:
        return empty_figure("this run has no students to compare")
    names = _ordered(list(students), ("scratch", "kd"))
    missing = [n for n in names if combiner not in (students[n].get("combiners") or {})]
    if missing:
        raise ValueError(f"no '{combiner}' terms for student(s) {missing}; combiners are "
                         f"{', '.join(COMBINER_ORDER)}")
    terms = {n: students[n]["combiners"][combiner]["terms"] for n in names}
    has_variance = [n for n in names if terms[n].get("variance") is not None]
    loss_name = students[names[0]]["combiners"][combiner].get("loss_name", "")
    label = LOSS_LABELS.get(loss_name, loss_name)
    if has_variance:
        fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4],
                            subplot_titles=("loss and bias", "variance across seeds"))
    else:
        fig = make_subplots(rows=1, cols=1, subplot_titles=("loss",))
    for i, n in enumerate(names):
        s, t = students[n], terms[n]
        colour = STUDENT_COLOURS.get(n, PALETTE[i % len(PALETTE)])
        seeds = s.get("seeds", "?")
        first = ["loss", "bias"] if has_variance else ["loss"]
        fig.add_trace(go.Bar(x=first, y=nums(t.get(k) for k in first), name=n, legendgroup=n,
                             marker_color=colour,
                             hovertemplate=f"{n} ({seeds} seeds)<br>%{{x}} %{{y:.4f}}<extra></extra>"),
                      row=1, col=1)
        if has_variance:
            fig.add_trace(go.Bar(x=["variance"], y=[num(t.get("variance"))], name=n, legendgroup=n,
                                 showlegend=False, marker_color=colour,
                                 hovertemplate=f"{n} ({seeds} seeds)<br>variance %{{y:.3g}}<extra></extra>"),
                          row=1, col=2)
    title = f"Student spread over seeds: {label}, {combiner}"
    if "kd" in has_variance and "scratch" in has_variance and num(terms["scratch"]["variance"]) > 0:
        ratio = num(terms["kd"]["variance"]) / num(terms["scratch"]["variance"])
        title += f": KD variance = {ratio:.2g} × scratch"
    by_reason: dict[str, list[str]] = {}  # students sharing a reason are named once
    for n in names:
        if students[n].get("reason"):
            by_reason.setdefault(students[n]["reason"], []).append(n)
    reasons = [f"{', '.join(who)}: {reason}" for reason, who in by_reason.items()]
    fig.update_layout(barmode="group", height=360, margin=dict(l=10, r=10, b=110 if reasons else 20))
    set_title(fig, title, top_px=30)  # a half-page chart; room for the subplot titles
    if reasons:
        _reason_note(fig, "; ".join(reasons), y=-0.15)
    return fig


PAIRWISE = {
    "error_correlation": ("Error correlation (0/1 errors, mean over draws)", "RdBu_r", -1.0, 1.0),
    "disagreement": ("Disagreement (fraction of examples with different predictions)", "Blues", 0.0, 1.0),
}


def error_correlation_heatmap(diag: Mapping[str, Any], metric: str = "error_correlation") -> go.Figure:
    """Member-by-member heatmap of diag["pairwise"][metric] with the value in each cell; None/NaN blank.

    diag["pairwise"]: {members: [names], error_correlation: M x M, disagreement: M x M} (None where
    a correlation is undefined: a member right, or wrong, on every test example).
    """
    if metric not in PAIRWISE:
        raise ValueError(f"metric must be one of {', '.join(PAIRWISE)}; got '{metric}'")
    problem = diag_problem(diag)
    if problem:
        return empty_figure(problem)
    pair = diag.get("pairwise") or {}
    members = [str(m) for m in pair.get("members") or []]
    if not members:
        return empty_figure("no pairwise statistics in these diagnostics")
    z = np.array([nums(row) for row in pair[metric]], dtype=float).reshape(len(members), len(members))
    text = [["" if math.isnan(v) else f"{v:.2f}" for v in row] for row in z]
    title, scale, lo, hi = PAIRWISE[metric]
    fig = go.Figure(go.Heatmap(z=z, x=members, y=members, text=text, texttemplate="%{text}", colorscale=scale,
                               zmin=lo, zmax=hi, hoverongaps=False, colorbar=dict(thickness=12),
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    blank = " Blank: undefined (a member right or wrong on every example)." if np.isnan(z).any() else ""
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(showgrid=False)
    fig.update_layout(height=max(300, 60 * len(members) + 140), margin=dict(l=10, r=10, b=10))
    return set_title(fig, title + "." + blank)  # a half-page chart


def disagreement_heatmap(diag: Mapping[str, Any]) -> go.Figure:
    """error_correlation_heatmap of the pairwise disagreement."""
    return error_correlation_heatmap(diag, "disagreement")


BIN_KEYS = ("bin_lower", "bin_upper", "confidence", "accuracy", "count")


def _is_bins(value: Any) -> bool:
    return isinstance(value, Mapping) and all(k in value for k in BIN_KEYS)


def _calibration_sets(source: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    if "calibration" in source:  # a diagnose() dict
        return {k: v for k, v in (source["calibration"] or {}).items() if _is_bins(v)}
    if _is_bins(source):  # one set of bins (core.evaluate.reliability or core.diagnostics.calibration)
        return {"model": source}
    sets = {str(k): v for k, v in source.items() if _is_bins(v)}
    if not sets and source:
        raise ValueError(f"reliability_diagram needs a diagnostics dict, a bins dict ({', '.join(BIN_KEYS)}) "
                         "or a mapping of name -> bins dict")
    return sets


def bins_ece(bins: Mapping[str, Any]) -> float:
    """ECE of a bins dict: its `ece` if given, else sum_b count_b |accuracy_b - confidence_b| / N."""
    if bins.get("ece") is not None:
        return float(bins["ece"])
    total = sum(bins["count"])
    gaps = sum(c * abs(a - f) for a, f, c in zip(bins["accuracy"], bins["confidence"], bins["count"]) if c)
    return gaps / total if total else math.nan


def reliability_diagram(source: Mapping[str, Any], combiners: Sequence[str] | None = None) -> go.Figure:
    """Accuracy per confidence bin (bars as wide as the bin) against the diagonal, counts below, ECE in titles.

    source: a diagnostics dict (draws diag["calibration"]: mean_logit and mean_prob), one bins dict
    {bin_lower, bin_upper, confidence, accuracy, count[, ece]} (None for empty bins), or a mapping
    name -> bins dict. `combiners` picks some of the sets by name.
    """
    problem = diag_problem(source)
    if problem:
        return empty_figure(problem)
    sets = _calibration_sets(source)
    if combiners is not None:
        unknown = [c for c in combiners if c not in sets]
        if unknown:
            raise ValueError(f"no calibration bins for {unknown}; available: {', '.join(sets) or 'none'}")
        sets = {c: sets[c] for c in combiners}
    sets = {k: v for k, v in sets.items() if sum(v["count"]) > 0}
    if not sets:
        return empty_figure("no calibration bins with examples to draw")
    names = list(sets)
    eces = {n: bins_ece(sets[n]) for n in names}
    fig = make_subplots(rows=2, cols=len(names), row_heights=[0.74, 0.26], shared_xaxes=True,
                        vertical_spacing=0.07, horizontal_spacing=0.12,
                        # Name and ECE on two lines: side by side they overran their panels at 4+ panels.
                        subplot_titles=[f"{n}<br>ECE {eces[n]:.3f}" for n in names] + [""] * len(names))
    fig.update_annotations(font_size=12)
    for col, n in enumerate(names, start=1):
        b = sets[n]
        lower, upper = np.asarray(b["bin_lower"], float), np.asarray(b["bin_upper"], float)
        centre, width = (lower + upper) / 2, upper - lower
        conf, acc, count = nums(b["confidence"]), nums(b["accuracy"]), np.asarray(b["count"], dtype=float)
        first = col == 1
        fig.add_trace(go.Bar(x=centre, y=acc, width=width, name="accuracy", legendgroup="accuracy",
                             showlegend=first, marker=dict(color="#4c78a8", line=dict(color="white", width=0.5)),
                             customdata=np.stack([conf, count], axis=-1),
                             hovertemplate="confidence %{customdata[0]:.3f}<br>accuracy %{y:.3f}"
                                           "<br>%{customdata[1]:.0f} examples<extra></extra>"),
                      row=1, col=col)
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                 legendgroup="diagonal", showlegend=first, line=dict(color="#d62728", dash="dash"),
                                 hoverinfo="skip"), row=1, col=col)
        fig.add_trace(go.Bar(x=centre, y=count, width=width, name="examples per bin", legendgroup="count",
                             showlegend=first, marker_color="#9d9d9d",
                             hovertemplate="%{y:.0f} examples<extra></extra>"), row=2, col=col)
        # accuracy shares 0-1 across panels: tick labels on the first only, where they cannot hit a neighbour
        fig.update_yaxes(range=[0, 1], row=1, col=col, title="accuracy" if first else None, showticklabels=first)
        fig.update_yaxes(row=2, col=col, title="count" if first else None)
        fig.update_xaxes(range=[0, 1], row=2, col=col, title="confidence" if len(names) > 1
                         else "confidence (top-class probability)")
    summary = ", ".join(f"{n} {eces[n]:.3f}" for n in names)
    # legend under the panels: beside them it took a third of a half-page chart
    fig.update_layout(height=520, bargap=0, margin=dict(l=10, r=10, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.16, x=0))
    return set_title(fig, f"Reliability: ECE {summary}", top_px=50)  # a half-page chart; two-line subplot titles
