"""Figure builders: inputs shaped like a real run's, checked for traces, key values and edge cases.

Diagnostics dicts come from core.diagnostics.diagnose on tiny hand-made or random logits; nothing
here reads a run folder. The Learn page is run end to end with AppTest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from core.diagnostics import diagnose
from dashboard import figures

LEARN_PAGE = str(Path(__file__).resolve().parent.parent / "dashboard" / "views" / "learn.py")


def _names(fig: go.Figure) -> list[str]:
    return [t.name for t in fig.data]


def _message(fig: go.Figure) -> str:
    assert figures.is_empty(fig)
    return fig.layout.annotations[0].text


def _random_logits(m: int, d: int, n: int = 40, k: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(m, d, n, k, generator=gen), torch.randint(0, k, (n,), generator=gen)


@pytest.fixture(scope="module")
def diag():
    """Three members x two draws, with a KD and a scratch student of three seeds each."""
    z, y = _random_logits(3, 2)
    gen = torch.Generator().manual_seed(1)
    students = {"kd": 2.0 * torch.randn(3, 40, 4, generator=gen),
                "scratch": 3.0 * torch.randn(3, 40, 4, generator=gen)}
    return json.loads(json.dumps(diagnose(z, y, member_names=["resnet", "effnet", "byob"], students=students)))


@pytest.fixture(scope="module")
def single_draw_diag():
    z, y = _random_logits(2, 1, seed=3)
    return diagnose(z, y, member_names=["a", "b"], students={"kd": z[0, :1], "scratch": z[1, :1]})


# ---------- downsample and training curves ----------

def test_curves_use_the_stores_downsampler_and_keep_a_spike():
    import dashboard.figures.curves as curves
    from core.store import frames
    assert curves.downsample is frames.downsample  # one downsampler in the code base
    assert not hasattr(figures, "downsample")
    y = np.sin(np.arange(10_000) / 500.0)
    y[4321] = 25.0  # one spike a stride would very likely skip
    frame = pd.DataFrame({"source": "teacher/a/s0", "step": np.arange(10_000), "metric": "train/loss", "value": y})
    line = figures.training_curves(frame, "train/loss", x="step", max_points=2_000).data[0]
    xs = np.asarray(line.x)
    assert len(xs) <= 2_000 and xs[0] == 0 and xs[-1] == 9_999 and np.all(np.diff(xs) > 0)
    assert 4321 in xs and max(line.y) == 25.0
    assert set(xs) <= set(range(10_000))  # only points of the series, never interpolated ones


def test_curves_tolerate_nan_values():
    y = np.linspace(1, 0, 1_000)
    y[500:600] = np.nan  # a diverged stretch
    frame = pd.DataFrame({"source": "teacher/a/s0", "step": np.arange(1_000), "metric": "train/loss", "value": y})
    line = figures.training_curves(frame, "train/loss", x="step", max_points=50).data[0]
    assert 3 <= len(line.x) <= 50 and line.x[0] == 0 and line.x[-1] == 999


def test_source_kind():
    assert figures.source_kind("teacher/resnet10t/s0") == "teacher"
    assert figures.source_kind("student/scratch/s1") == "student scratch"
    assert figures.source_kind("student/kd-r2/s0") == "student kd"
    assert figures.source_kind("ensembles") == "other"


def _curve_frame() -> pd.DataFrame:
    long = pd.DataFrame({"source": "teacher/resnet10t/s0", "step": np.arange(10_000), "metric": "train/loss",
                         "value": np.exp(-np.arange(10_000) / 3_000)})
    rows = [long]
    for source in ("student/scratch/s0", "student/kd-r1/s0", "teacher/effnet/s0"):
        rows.append(pd.DataFrame({"source": source, "step": [10, 20, 30], "metric": "train/loss",
                                  "value": [1.0, 0.8, 0.7]}))
    rows.append(pd.DataFrame({"source": "teacher/resnet10t/s0", "step": [5], "metric": "val/acc", "value": [0.5]}))
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=0)  # arrival order is not x order


def test_training_curves_one_line_per_source_coloured_by_kind():
    fig = figures.training_curves(_curve_frame(), "train/loss", x="step", max_points=500)
    assert _names(fig) == ["teacher/effnet/s0", "teacher/resnet10t/s0", "student/scratch/s0", "student/kd-r1/s0"]
    colours = [t.line.color for t in fig.data]
    assert colours[0] == colours[1] == figures.KIND_COLOURS["teacher"]
    assert colours[2] == figures.KIND_COLOURS["student scratch"]
    assert colours[3] == figures.KIND_COLOURS["student kd"]
    assert fig.data[0].line.dash != fig.data[1].line.dash  # two teacher models told apart
    long = fig.data[1]
    assert 400 <= len(long.x) <= 500 and long.x[0] == 0 and long.x[-1] == 9_999  # sorted, then downsampled
    assert np.all(np.diff(np.asarray(long.x)) > 0)
    assert list(fig.data[2].y) == [1.0, 0.8, 0.7]


def test_training_curves_side_by_side_share_one_legend():
    frame = _curve_frame()
    frame = pd.concat([frame, frame.assign(metric="train/acc", value=0.5)], ignore_index=True)
    fig = figures.training_curves_side_by_side(frame, ["train/loss", "train/acc"], x="step", max_points=500)
    assert [a.text for a in fig.layout.annotations] == ["train/loss", "train/acc"]
    names = [t.name for t in fig.data]
    assert names[:4] == names[4:] == ["teacher/effnet/s0", "teacher/resnet10t/s0", "student/scratch/s0",
                                      "student/kd-r1/s0"]
    assert [t.showlegend for t in fig.data] == [True] * 4 + [False] * 4  # one entry per model ...
    assert [t.legendgroup for t in fig.data[:4]] == names[:4]  # ... toggling it in both panels
    assert {t.xaxis for t in fig.data[:4]} == {"x"} and {t.xaxis for t in fig.data[4:]} == {"x2"}
    only = figures.training_curves_side_by_side(frame, ["train/loss", "val/nll"], x="step")
    assert [a.text for a in only.layout.annotations] == ["train/loss"]  # a metric with no values is left out
    assert figures.is_empty(figures.training_curves_side_by_side(frame, ["val/nll"], x="step"))


def test_training_curves_default_x_empty_and_missing_columns():
    frame = pd.DataFrame({"source": ["teacher/a/s0"] * 2, "epoch": [1, 2], "metric": "val/acc",
                          "value": [0.4, 0.6]})
    fig = figures.training_curves(frame, "val/acc")
    assert fig.layout.xaxis.title.text == "epoch" and list(fig.data[0].x) == [1, 2]
    assert "val/nll" in _message(figures.training_curves(frame, "val/nll"))
    assert figures.is_empty(figures.training_curves(frame.iloc[0:0], "val/acc"))
    with pytest.raises(ValueError, match="value"):
        figures.training_curves(frame.drop(columns="value"), "val/acc")


# ---------- accuracy-cost trade-off ----------

def _row(method, kind, acc, latency, params, std=0.01):
    return {"method": method, "kind": kind, "test_acc_mean": acc, "test_acc_std": std, "seeds": 3,
            "latency_ms": latency, "params": params}


ROWS = [
    _row("small", "teacher", 0.70, 1.0, 2e6),
    _row("slow-worse", "teacher", 0.65, 2.0, 1e6),          # dominated on latency, cheapest in params
    _row("ensemble/mean_logit", "ensemble", 0.80, 3.0, 9e6),
    _row("ensemble/vote", "ensemble", 0.75, 3.0, 9e6),      # same cost, lower accuracy
    _row("student/kd", "student", 0.80, 10.0, 5e5),         # same accuracy as the ensemble, slower
    _row("big", "teacher", 0.90, 20.0, 3e7),
    _row("unmeasured", "student", 0.60, None, 1e5),         # no latency: neither plotted nor on that front
]


def test_pareto_front_latency_and_params():
    assert [r["method"] for r in figures.pareto_front(ROWS, "latency_ms")] == [
        "small", "ensemble/mean_logit", "big"]
    assert [r["method"] for r in figures.pareto_front(ROWS, "params")] == [
        "unmeasured", "student/kd", "big"]  # the ensembles tie student/kd's accuracy at 18x the params
    assert figures.pareto_front([], "params") == []
    with pytest.raises(ValueError, match="x must be one of"):
        figures.pareto_front(ROWS, "accuracy")


def test_tradeoff_markers_error_bars_and_step_front():
    fig = figures.tradeoff(ROWS, x="latency_ms")
    assert _names(fig) == ["teacher", "ensemble", "student", "Pareto front", "labels"]  # room for every name
    assert fig.layout.xaxis.type == "log"
    teachers = fig.data[0]
    assert list(teachers.x) == [1.0, 2.0, 20.0] and list(teachers.error_y.array) == [0.01] * 3
    assert {t.marker.symbol for t in fig.data[:3]} == {"circle", "diamond", "square"}
    front = fig.data[3]
    assert list(front.x) == [1.0, 3.0, 20.0] and list(front.y) == [0.70, 0.80, 0.90]
    assert front.line.shape == "hv"
    assert list(fig.data[2].x) == [10.0]  # the unmeasured student is left out ...
    assert "1 method(s)" in fig.layout.title.text  # ... and says so


def test_tradeoff_labels_of_coincident_points_are_merged():
    rows = [_row("student/scratch", "student", 0.5, 2.0, 1e5), _row("student/kd", "student", 0.5, 2.0, 1e5),
            _row("teacher", "teacher", 0.7, 4.0, 1e6)]
    fig = figures.tradeoff(rows, x="params")
    labels = next(t for t in fig.data if t.name == "labels")
    assert sorted(labels.text) == ["student: scratch, kd", "teacher"]  # one label for the shared point
    assert list(fig.data[1].hovertext) == ["student/scratch", "student/kd"]


# The comparison of a digits-demo run: six ensembles at one cost with close accuracies, teachers and
# students in a cluster each (what made the labels print over each other).
CROWDED = [_row("resnet10t", "teacher", 0.9805, 2.34, 1.23e6), _row("test_efficientnet", "teacher", 0.9819, 1.41, 1.0e5),
           _row("test_byobnet", "teacher", 0.9749, 1.60, 2.0e5),
           *[_row(f"ensemble/{s}", "ensemble", a, 10.69, 3.08e6, std=0.0) for s, a in
             (("mean_prob", 0.9944), ("mean_logit", 0.9944), ("vote", 0.9944), ("learned", 0.9861),
              ("stacking", 0.9916), ("uncertainty", 0.9916))],
           _row("student/scratch", "student", 0.9266, 1.07, 8.0e4, std=0.018),
           _row("student/kd", "student", 0.9369, 1.07, 8.0e4, std=0.015)]


def _label_boxes(fig, canvas):
    """The pixel box of every drawn label, on the canvas the figure placed its labels on."""
    (x0, x1), (y0, y1) = fig.layout.xaxis.range, fig.layout.yaxis.range
    labels = next(t for t in fig.data if t.name == "labels")
    assert labels.textposition == "middle center"  # drawn centred on the box it was placed in
    boxes = []
    for x, y, text in zip(labels.x, labels.y, labels.text):
        cx, cy = (math.log10(x) - x0) / (x1 - x0) * canvas.width, (y - y0) / (y1 - y0) * canvas.height
        w, h = canvas.size(text)
        boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return boxes, list(labels.text)


def _marker_boxes(fig, canvas):
    (x0, x1), (y0, y1) = fig.layout.xaxis.range, fig.layout.yaxis.range
    return [canvas.marker((math.log10(x) - x0) / (x1 - x0) * canvas.width, (y - y0) / (y1 - y0) * canvas.height)
            for t in fig.data if t.mode == "markers" and t.x[0] is not None for x, y in zip(t.x, t.y)]


def _apart(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


@pytest.mark.parametrize("cost", ["latency_ms", "params"])
def test_tradeoff_labels_never_overlap_and_the_rest_are_in_the_legend(cost):
    from dashboard.figures.pareto import CANVAS
    fig = figures.tradeoff(CROWDED, x=cost)
    boxes, texts = _label_boxes(fig, CANVAS)
    markers = _marker_boxes(fig, CANVAS)
    assert len(markers) == len(CROWDED)
    for i, a in enumerate(boxes):
        assert a[0] >= 0 and a[1] >= 0 and a[2] <= CANVAS.width and a[3] <= CANVAS.height, a  # inside the plot
        assert all(_apart(a, b) for b in boxes[i + 1:]), texts[i]
        # a label covers no marker, except those of the cluster it names (it sits beside them)
        named = [m for m, r in zip(markers, _by_trace_order(fig)) if r.split("/")[-1] in texts[i]]
        assert all(_apart(a, m) for m in markers if m not in named), texts[i]
    # Every method is named: in a label, or in a legend entry of its own (numbered when the number fits).
    entries = [t.name for t in fig.data if t.mode == "markers" and t.x[0] is None]
    for row in CROWDED:
        short = row["method"].split("/")[-1]
        assert any(short in t for t in texts) or any(short in e for e in entries), row["method"]
    assert entries, "six ensembles at one cost and a cluster of teachers cannot all be named in place"
    numbers = sorted(int(e.split()[0]) for e in entries if e.split()[0].isdigit())
    assert numbers == list(range(1, len(numbers) + 1))
    assert sorted(int(t) for t in texts if t.isdigit()) == numbers  # each number is drawn by its points
    assert fig.layout.legend.orientation == "h"


def _by_trace_order(fig):
    """Method names in the order _marker_boxes lists the markers."""
    return [h for t in fig.data if t.mode == "markers" and t.x[0] is not None for h in t.hovertext]


def test_place_labels_moves_a_label_aside_or_gives_up():
    from dashboard.figures.labels import Canvas, place_labels
    canvas = Canvas()
    a, b = canvas.marker(150, 100), canvas.marker(170, 100)
    markers = [(a, 0), (b, 1)]
    first, second = place_labels([a, b], ["left one", "right one"], canvas, markers=markers)
    assert first is not None and second is not None and _apart(first, second)
    assert _apart(first, b) and _apart(second, a)  # neither covers the other's marker
    # A label wider than the plot has no place at all; an empty one is not placed.
    assert place_labels([a], ["x" * 100], Canvas(width=200)) == [None]
    assert place_labels([a], [""]) == [None]
    with pytest.raises(ValueError, match="one text per anchor"):
        place_labels([a], ["a", "b"])


# ---------- bias, variance, diversity ----------

def test_bvd_bars_stack_to_the_ensemble_loss(diag):
    fig = figures.bvd_bars(diag)
    assert len(fig.data) == 12  # 3 combiners x (bias, variance, -diversity, loss marker)
    assert _names(fig)[:4] == ["bias", "variance", "− diversity", "ensemble loss"]
    assert [t.showlegend for t in fig.data if t.name == "bias"] == [True, False, False]
    for col, combiner in enumerate(("mean_logit", "mean_prob", "vote")):
        bias, var, div, loss = (t.y[0] for t in fig.data[4 * col: 4 * col + 4])
        terms = diag["combiners"][combiner]["terms"]
        assert bias == pytest.approx(terms["bias"]) and div == pytest.approx(-terms["diversity"])
        assert bias + var + div == pytest.approx(loss, abs=1e-9)
    assert fig.layout.barmode == "relative"


def test_bvd_bars_negative_diversity_effect_is_drawn_above_zero():
    # Each member is right on a different example and the two wrong ones agree, so the vote is wrong
    # everywhere: member 0/1 loss 2/3, vote loss 1, diversity-effect -1/3.
    right = torch.tensor([[0, 1, 1], [1, 0, 1], [1, 1, 0]])  # predicted class per member and example
    z = 4.0 * torch.nn.functional.one_hot(right, 3).float()
    z = torch.stack([z, z + 0.01], dim=1)  # two draws: bias and variance are estimable
    d = diagnose(z, torch.zeros(3, dtype=torch.long), member_names=["a", "b", "c"])
    assert d["combiners"]["vote"]["terms"]["diversity"] == pytest.approx(-1 / 3)
    vote = [t for t in figures.bvd_bars(d).data if t.x[0] == "vote"]
    div = next(t for t in vote if t.name == "− diversity")
    loss = next(t for t in vote if t.name == "ensemble loss")
    assert div.y[0] == pytest.approx(1 / 3) and "negative" in div.hovertemplate
    assert loss.y[0] == pytest.approx(1.0)


def test_bvd_bars_single_draw_shows_member_loss_and_reason(single_draw_diag):
    fig = figures.bvd_bars(single_draw_diag)
    assert _names(fig)[:3] == ["member loss", "− diversity", "ensemble loss"] and len(fig.data) == 9
    assert "bias" not in _names(fig)
    assert "2 draws" in fig.layout.annotations[-1].text.replace("<br>", " ")
    terms = single_draw_diag["combiners"]["mean_logit"]["terms"]
    assert fig.data[0].y[0] == pytest.approx(terms["member_loss"])


def test_bvd_bars_error_and_bad_input(diag):
    assert "out of memory" in _message(figures.bvd_bars({"error": "out of memory"}))
    assert not figures.is_empty(figures.bvd_bars({**diag, "error": None}))  # v2 results: no error is null
    with pytest.raises(ValueError, match="diagnostics dict"):
        figures.bvd_bars([1, 2])


def test_diversity_growth(diag):
    fig = figures.diversity_growth(diag)
    assert _names(fig) == ["ensemble loss", "mean member loss", "diversity"]
    rows = diag["growth"]["rows"]
    assert list(fig.data[0].x) == [1, 2, 3]
    assert list(fig.data[2].y) == pytest.approx([r["diversity"] for r in rows])
    assert fig.data[2].y[0] == pytest.approx(0.0, abs=1e-12)  # one member has no diversity
    assert [t.split("+")[1] for t in fig.layout.xaxis.ticktext] == diag["growth"]["order"]
    one = figures.diversity_growth({"growth": {"by": "member_order", "rows": rows[:1]}})
    assert [len(t.x) for t in one.data] == [1, 1, 1]
    assert figures.is_empty(figures.diversity_growth({"growth": {"rows": []}}))


def test_student_variance(diag, single_draw_diag):
    fig = figures.student_variance(diag)
    assert _names(fig) == ["scratch", "scratch", "kd", "kd"]
    kd = diag["students"]["kd"]["combiners"]["mean_logit"]["terms"]
    assert list(fig.data[2].x) == ["loss", "bias"] and fig.data[3].y[0] == pytest.approx(kd["variance"])
    assert "KD variance" in fig.layout.title.text
    one = figures.student_variance(single_draw_diag)
    assert _names(one) == ["scratch", "kd"] and list(one.data[0].x) == ["loss"]
    note = one.layout.annotations[-1].text.replace("<br>", " ")
    assert note.startswith("scratch, kd: ") and note.count("student.seeds") == 1  # one shared reason, once
    assert figures.is_empty(figures.student_variance({**diag, "students": {}}))
    with pytest.raises(ValueError, match="no 'stacking' terms"):
        figures.student_variance(diag, combiner="stacking")


def test_error_correlation_heatmap_blank_cells():
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    always_right = 5.0 * torch.nn.functional.one_hot(y, 2).float()
    sometimes = always_right.clone()
    sometimes[[0, 3]] = sometimes[[0, 3]].flip(-1)
    other = always_right.clone()
    other[[0, 1, 2]] = other[[0, 1, 2]].flip(-1)
    d = diagnose(torch.stack([always_right, sometimes, other]), y, member_names=["perfect", "b", "c"])
    fig = figures.error_correlation_heatmap(d)
    heat = fig.data[0]
    z = np.array(heat.z, dtype=float)
    assert np.isnan(z[0, 1]) and np.isnan(z[1, 0]) and heat.text[0][1] == ""
    assert heat.text[1][2] == f"{d['pairwise']['error_correlation'][1][2]:.2f}" and heat.text[1][1] == "1.00"
    assert list(heat.x) == ["perfect", "b", "c"] and "Blank" in fig.layout.title.text
    dis = figures.disagreement_heatmap(d).data[0]
    assert dis.z[0][1] == pytest.approx(2 / 6) and dis.zmin == 0.0
    with pytest.raises(ValueError, match="metric"):
        figures.error_correlation_heatmap(d, "kappa")


def test_heatmap_single_member():
    z, y = _random_logits(1, 2, seed=5)
    fig = figures.error_correlation_heatmap(diagnose(z, y, member_names=["only"]))
    assert np.array(fig.data[0].z).shape == (1, 1)


def test_reliability_diagram_from_diagnostics(diag):
    fig = figures.reliability_diagram(diag)
    assert _names(fig) == ["accuracy", "perfect calibration", "examples per bin"] * 2
    cal = diag["calibration"]["mean_logit"]
    assert f"{cal['ece']:.3f}" in fig.layout.title.text
    bars = fig.data[0]
    assert list(bars.width) == pytest.approx([u - lo for lo, u in zip(cal["bin_lower"], cal["bin_upper"])])
    empty_bins = [i for i, c in enumerate(cal["count"]) if c == 0]
    assert empty_bins and all(math.isnan(bars.y[i]) for i in empty_bins)  # None -> gap
    assert list(fig.data[2].y) == cal["count"]
    only = figures.reliability_diagram(diag, combiners=["mean_prob"])
    assert len(only.data) == 3 and "mean_prob" in only.layout.title.text
    with pytest.raises(ValueError, match="stacking"):
        figures.reliability_diagram(diag, combiners=["stacking"])


def test_reliability_diagram_from_bins_and_empty():
    bins = {"bin_lower": [0.0, 0.5], "bin_upper": [0.5, 1.0], "confidence": [0.4, 0.9],
            "accuracy": [0.5, 0.6], "count": [2, 8]}
    fig = figures.reliability_diagram(bins)  # no ece key: computed from the bins
    assert figures.bins_ece(bins) == pytest.approx((2 * 0.1 + 8 * 0.3) / 10)
    assert "0.260" in fig.layout.title.text and len(fig.data) == 3
    none = {**bins, "confidence": [None, None], "accuracy": [None, None], "count": [0, 0]}
    assert figures.is_empty(figures.reliability_diagram(none))
    with pytest.raises(ValueError, match="bins dict"):
        figures.reliability_diagram({"x": 1})


# ---------- per-example outputs ----------

def test_weights_histogram():
    rng = np.random.default_rng(0)
    w = rng.dirichlet(np.ones(3), size=50)
    fig = figures.weights_histogram(w, ["t0/s0", "t0/s1", "t1/s0"])
    assert _names(fig) == ["t0/s0", "t0/s1", "t1/s0"] and all(t.type == "histogram" for t in fig.data)
    assert list(fig.data[1].x) == pytest.approx(w[:, 1])
    assert fig.layout.shapes[0].x0 == pytest.approx(1 / 3)
    assert fig.data[0].xbins.size == fig.data[2].xbins.size  # shared bins
    uniform = figures.weights_histogram(np.full((4, 2), 0.5), ["a", "b"])  # constant weights still draw
    assert uniform.data[0].xbins.size > 0
    assert figures.is_empty(figures.weights_histogram(np.zeros((0, 2)), ["a", "b"]))
    with pytest.raises(ValueError, match="2 members but 3"):
        figures.weights_histogram(w[:, :2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="examples, members"):
        figures.weights_histogram(w[:, 0], ["a"])


def test_disagreement_gallery():
    images = np.random.default_rng(0).integers(0, 255, (3, 1, 8, 8), dtype=np.uint8)
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    q = np.array([[0.1, 0.7, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]])
    labels = [3, 1, 0]
    classes = ["circle", "square", "triangle", "cross"]
    fig = figures.disagreement_gallery(images, {"resnet/s0": p, "effnet/s0": q}, labels, classes, top_k=2,
                                       scores=[0.9, 0.0, 0.5])
    assert len(fig.data) == 3 + 3 * 2
    assert [t.type for t in fig.data[:3]] == ["heatmap", "bar", "bar"]
    assert [t.showlegend for t in fig.data if t.type == "bar"] == [True, True] + [False] * 4
    first = fig.data[1]  # image 0 (highest score): top-2 classes circle, square, plus the true class cross
    assert list(first.x) == ["circle", "square", "cross*"] and list(first.y) == [0.7, 0.1, 0.1]
    titles = [a.text for a in fig.layout.annotations if a.text]
    assert titles[:3] == ["true: cross · disagreement 0.90", "true: circle · disagreement 0.50",
                          "true: square · disagreement 0.00"]
    rgb = figures.disagreement_gallery(np.zeros((1, 3, 8, 8), np.uint8), {"a": p[:1]}, [0], classes)
    assert rgb.data[0].type == "image"
    assert figures.is_empty(figures.disagreement_gallery(np.zeros((0, 1, 8, 8), np.uint8),
                                                         {"a": np.zeros((0, 4))}, [], classes))
    with pytest.raises(ValueError, match="not logits"):
        figures.disagreement_gallery(images, {"a": 3 * p}, labels, classes)
    with pytest.raises(ValueError, match=r"expected \(3, 4\)"):
        figures.disagreement_gallery(images, {"a": p[:, :3]}, labels, classes)


# ---------- config diff ----------

def test_config_diff_flattens_and_keeps_only_differences():
    a = {"data": {"name": "shapes", "count": 240}, "train": {"lr": 0.001, "epochs": 2},
         "teachers": [{"model": "resnet", "seeds": 2}], "flags": [], "seed": 1, "amp": True}
    b = {"data": {"name": "shapes", "count": 480}, "train": {"lr": 0.001, "epochs": 2.0},
         "teachers": [{"model": "resnet", "seeds": 2}, {"model": "effnet", "seeds": 1}], "flags": ["x"],
         "seed": 1, "amp": 1, "note": None}
    diff = figures.config_diff(a, b, names=("run1", "run2"))
    assert list(diff.columns) == ["key", "run1", "run2"]
    rows = {r.key: (r.run1, r.run2) for r in diff.itertuples()}
    assert rows == {"data.count": (240, 480), "teachers.1.model": (figures.ABSENT, "effnet"),
                    "teachers.1.seeds": (figures.ABSENT, 1), "flags": ([], figures.ABSENT),
                    "flags.0": (figures.ABSENT, "x"), "amp": (True, 1), "note": (figures.ABSENT, None)}
    same = figures.config_diff(a, a)
    assert same.empty and list(same.columns) == ["key", "a", "b"]
    with pytest.raises(ValueError):
        figures.config_diff(a, [1])


# ---------- Learn page figures ----------

def test_softmax_temperature_flattens_with_t():
    z = [5.0, 3.0, 2.0, 0.5, -1.0]
    cold, hot = figures.softmax_temperature(z, 1.0), figures.softmax_temperature(z, 10.0)
    assert sum(hot.data[0].y) == pytest.approx(1.0)
    assert list(cold.data[0].y) == pytest.approx(list(cold.data[1].y))  # T = 1 bars equal the T = 1 markers
    assert max(hot.data[0].y) < max(cold.data[0].y) and min(hot.data[0].y) > min(cold.data[0].y)
    assert np.argsort(hot.data[0].y).tolist() == np.argsort(z).tolist()  # the ranking is kept
    with pytest.raises(ValueError, match="temperature"):
        figures.softmax_temperature(z, 0.0)


def test_averaging_demo_variance_shrinks_bias_stays():
    fig = figures.averaging_demo(members=8, bias=0.5, noise=1.0, correlation=0.2, trials=20_000)
    single, average = np.asarray(fig.data[0].x), np.asarray(fig.data[1].x)
    assert average.mean() == pytest.approx(0.5, abs=0.03)  # bias unchanged
    assert average.var() == pytest.approx(0.2 + 0.8 / 8, rel=0.05)  # sigma^2 (rho + (1 - rho) / M)
    assert single.var() == pytest.approx(1.0, rel=0.05)
    theory = next(t for t in fig.data if t.name == "variance")
    assert theory.y[0] == pytest.approx(1.0) and theory.y[7] == pytest.approx(0.3)


def test_centroid_demo_minima():
    probs = [0.9, 0.6, 0.2]
    c = figures.centroids(probs)
    geo = np.prod(probs) ** (1 / 3) / (np.prod(probs) ** (1 / 3) + np.prod([1 - p for p in probs]) ** (1 / 3))
    assert c["geometric"] == pytest.approx(geo) and c["arithmetic"] == pytest.approx(np.mean(probs))
    fig = figures.centroid_demo(probs)
    reverse, forward = fig.data[0], fig.data[1]
    assert reverse.x[int(np.argmin(reverse.y))] == pytest.approx(c["geometric"], abs=2e-3)
    assert forward.x[int(np.argmin(forward.y))] == pytest.approx(c["arithmetic"], abs=2e-3)
    with pytest.raises(ValueError):
        figures.centroids([0.5, 1.0])


def test_kd_loss_parts_match_the_training_loss():
    from core.distill import kd_loss
    zt, zs = [6.0, 4.0, 2.5, -1.0, -2.0], [2.0, 2.5, 1.0, 0.5, 0.0]
    parts = figures.kd_loss_parts(zt, zs, 0, 4.0, 0.9)
    ref = kd_loss("hinton", torch.tensor([zs], dtype=torch.float64), torch.tensor([zt], dtype=torch.float64),
                  torch.tensor([0]), 4.0, 0.9, target_kind="logits")
    assert parts["kd"] == pytest.approx(float(ref["kd"]), rel=1e-9)
    assert parts["loss"] == pytest.approx(float(ref["loss"]), rel=1e-9)


def test_kd_gradient_scale_t_squared_keeps_the_size():
    fig = figures.kd_gradient_scale([6.0, 4.0, 2.5, -1.0, -2.0], [2.0, 2.5, 1.0, 0.5, 0.0], 4.0,
                                    temperatures=[10.0, 20.0])
    without, with_t2 = fig.data[0].y, fig.data[1].y
    assert without[1] / without[0] == pytest.approx(0.25, rel=0.05)  # 1 / T^2
    assert with_t2[1] / with_t2[0] == pytest.approx(1.0, rel=0.05)
    assert fig.data[2].x[0] == 4.0


def test_deployment_cost():
    fig = figures.deployment_cost(5, 0.25)
    assert list(fig.data[0].y) == [5, 5, 5] and list(fig.data[1].y) == [0.25, 0.25, 5.25]


def test_every_builder_returns_a_figure(diag):
    built = [figures.bvd_bars(diag), figures.diversity_growth(diag), figures.student_variance(diag),
             figures.error_correlation_heatmap(diag), figures.reliability_diagram(diag), figures.tradeoff(ROWS)]
    assert all(isinstance(f, go.Figure) and not figures.is_empty(f) for f in built)
    json.dumps(built[0].to_plotly_json(), cls=__import__("plotly").utils.PlotlyJSONEncoder)  # serialisable


# ---------- the Learn page ----------

def test_learn_page_runs_and_reacts_to_the_temperature():
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(LEARN_PAGE, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert [t.label for t in at.tabs] == ["Averaging: variance, not bias", "Average logits",
                                         "Temperature and alpha", "Ensemble or student?"]
    # Lazy tabs: only the open tab is drawn; every tab, opened in turn, draws its own charts.
    per_tab = {}
    for tab in (t.label for t in at.tabs):
        at.session_state["learn_tab"] = tab
        at.run()
        assert not at.exception, (tab, at.exception)
        per_tab[tab] = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    # The last tab: the shipped when-KD-pays measurement (assets/when_kd_pays.json) and the deployment cost.
    assert [len(c) for c in per_tab.values()] == [1, 1, 2, 2]
    assert len(at.latex) >= 1
    at.session_state["learn_tab"] = "Temperature and alpha"
    at.run()
    before = [m.value for m in at.metric]
    at.slider(key="kd_temperature").set_value(1.0).run()
    assert not at.exception
    after = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert after[0]["layout"]["title"]["text"].startswith("T = 1:")
    assert [m.value for m in at.metric] != before
