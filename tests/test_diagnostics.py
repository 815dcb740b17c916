"""Diagnostics from cached logits, checked against loops written straight from the definitions.

The references below recompute every term example by example with Python floats (log, exp,
Counter), independently of the vectorised code under test, on tiny random inputs.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from core.diagnostics import (brier_terms, calibration, cross_entropy_terms, decompose, diagnose,
                              disagreement, diversity_growth, ece_many, error_correlation,
                              group_member_major, order_by_val_nll, per_example_frame,
                              pooled_calibration, student_terms, to_frames, zero_one_terms)
from core.diagnostics.frames import (GROWTH_COLUMNS, MEMBER_COLUMNS, PAIRWISE_COLUMNS, PER_DRAW_COLUMNS,
                                     RELIABILITY_COLUMNS, TERM_COLUMNS)
from core.errors import ConfigError, DataError
from core.evaluate import logits_metrics, probs_metrics

TOL = 1e-6


def _random(m: int, d: int, n: int, k: int, seed: int = 0,
            scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(m, d, n, k, generator=gen), torch.randint(0, k, (n,), generator=gen)


# ---------- independent references: one example at a time, plain Python floats ----------

def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def _geo_mean(dists: list[list[float]]) -> list[float]:
    """Normalised geometric mean of probability vectors."""
    g = [math.exp(sum(math.log(p[c]) for p in dists) / len(dists)) for c in range(len(dists[0]))]
    return [v / sum(g) for v in g]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _sq(p: list[float], q: list[float]) -> float:
    return sum((a - b) ** 2 for a, b in zip(p, q))


def _probs(z: torch.Tensor) -> list:
    """Nested lists q[i][d][n] of probability vectors."""
    return [[[_softmax(row) for row in draw] for draw in member] for member in z.double().tolist()]


def _ref_cross_entropy(z: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    q = _probs(z)
    m, d, n = len(q), len(q[0]), len(q[0][0])
    out = {t: [] for t in ("loss", "member_loss", "bias", "variance", "diversity")}
    for x in range(n):
        c = int(y[x])
        ens = [_geo_mean([q[i][j][x] for i in range(m)]) for j in range(d)]
        central = [_geo_mean([q[i][j][x] for j in range(d)]) for i in range(m)]
        out["loss"].append(sum(-math.log(e[c]) for e in ens) / d)
        out["member_loss"].append(sum(-math.log(q[i][j][x][c]) for i in range(m) for j in range(d)) / (m * d))
        out["bias"].append(sum(-math.log(central[i][c]) for i in range(m)) / m)
        out["variance"].append(sum(_kl(central[i], q[i][j][x]) for i in range(m) for j in range(d)) / (m * d))
        out["diversity"].append(sum(_kl(ens[j], q[i][j][x]) for i in range(m) for j in range(d)) / (m * d))
    return out


def _ref_brier(z: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    q = _probs(z)
    m, d, n, k = len(q), len(q[0]), len(q[0][0]), z.shape[-1]
    out = {t: [] for t in ("loss", "member_loss", "bias", "variance", "diversity")}
    for x in range(n):
        e = [1.0 if c == int(y[x]) else 0.0 for c in range(k)]
        ens = [[sum(q[i][j][x][c] for i in range(m)) / m for c in range(k)] for j in range(d)]
        central = [[sum(q[i][j][x][c] for j in range(d)) / d for c in range(k)] for i in range(m)]
        out["loss"].append(sum(_sq(p, e) for p in ens) / d)
        out["member_loss"].append(sum(_sq(q[i][j][x], e) for i in range(m) for j in range(d)) / (m * d))
        out["bias"].append(sum(_sq(central[i], e) for i in range(m)) / m)
        out["variance"].append(sum(_sq(q[i][j][x], central[i]) for i in range(m) for j in range(d)) / (m * d))
        out["diversity"].append(sum(_sq(q[i][j][x], ens[j]) for i in range(m) for j in range(d)) / (m * d))
    return out


def _mode_lowest(labels: list[int]) -> int:
    counts = Counter(labels)
    top = max(counts.values())
    return min(c for c, v in counts.items() if v == top)


def _ref_zero_one(z: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
    zz = z.tolist()
    m, d, n = len(zz), len(zz[0]), len(zz[0][0])
    # first maximal index = lowest class on a tie of logits
    pred = [[[row.index(max(row)) for row in draw] for draw in member] for member in zz]
    out = {t: [] for t in ("loss", "member_loss", "bias", "variance", "diversity")}
    for x in range(n):
        c = int(y[x])
        loss = sum(_mode_lowest([pred[i][j][x] for i in range(m)]) != c for j in range(d)) / d
        member = sum(pred[i][j][x] != c for i in range(m) for j in range(d)) / (m * d)
        bias = sum(_mode_lowest([pred[i][j][x] for j in range(d)]) != c for i in range(m)) / m
        out["loss"].append(loss)
        out["member_loss"].append(member)
        out["bias"].append(bias)
        out["variance"].append(member - bias)
        out["diversity"].append(member - loss)
    return out


def _close(actual: torch.Tensor, expected: list[float], tol: float = TOL) -> None:
    assert actual.tolist() == pytest.approx(expected, abs=tol)


# ---------- each decomposition against its reference, and its identity ----------

@pytest.mark.parametrize("fn, ref", [(cross_entropy_terms, _ref_cross_entropy), (brier_terms, _ref_brier),
                                     (zero_one_terms, _ref_zero_one)])
@pytest.mark.parametrize("shape", [(3, 4, 6, 5), (1, 3, 5, 2), (4, 2, 7, 3), (2, 5, 4, 2)])
def test_terms_match_reference(fn, ref, shape) -> None:
    z, y = _random(*shape, seed=sum(shape))
    dec = fn(z, y)
    expected = ref(z, y)
    for term, values in expected.items():
        _close(dec.per_example[term], values)
    # loss = bias + variance - diversity, example by example and on the test mean
    p = dec.per_example
    _close(p["loss"], (p["bias"] + p["variance"] - p["diversity"]).tolist())
    means = dec.means()
    assert means["loss"] == pytest.approx(means["bias"] + means["variance"] - means["diversity"], abs=TOL)


def test_cross_entropy_loss_is_expected_cross_entropy_of_mean_logit() -> None:
    z, y = _random(5, 3, 40, 10, seed=1, scale=4.0)
    dec = cross_entropy_terms(z, y)
    # independent loss: PyTorch's cross-entropy of the mean logit of each draw, averaged over draws
    expected = torch.stack([torch.nn.functional.cross_entropy(z[:, j].double().mean(0), y, reduction="none")
                            for j in range(z.shape[1])]).mean(0)
    _close(dec.per_example["loss"], expected.tolist())
    t = dec.means()
    assert t["loss"] == pytest.approx(t["bias"] + t["variance"] - t["diversity"], abs=TOL)
    assert t["loss"] == pytest.approx(t["ensemble_bias"] + t["ensemble_variance"], abs=TOL)
    assert t["member_loss"] == pytest.approx(t["bias"] + t["variance"], abs=TOL)
    assert min(dec.per_example["ensemble_variance"].tolist()) >= -1e-12


def test_single_run_form_holds_per_draw() -> None:
    z, y = _random(4, 3, 30, 6, seed=2)
    for fn in (cross_entropy_terms, brier_terms, zero_one_terms):
        dec = fn(z, y)
        pd_ = dec.per_draw
        assert pd_["loss"].shape == (3,)
        _close(pd_["loss"], (pd_["member_loss"] - pd_["diversity"]).tolist())
        # the draw-averaged single-run form is the mean of the per-draw values
        assert dec.means()["diversity"] == pytest.approx(float(pd_["diversity"].mean()), abs=TOL)
        # and each draw alone is the D = 1 decomposition of that draw
        one = fn(z[:, 1:2], y).means()
        assert one["loss"] == pytest.approx(float(pd_["loss"][1]), abs=TOL)


def test_cross_entropy_diversity_is_non_negative() -> None:
    for seed in range(4):
        z, y = _random(3, 2, 50, 4, seed=seed, scale=5.0)
        assert float(cross_entropy_terms(z, y).per_example["diversity"].min()) >= -1e-12
        assert float(cross_entropy_terms(z, y).per_example["variance"].min()) >= -1e-12


def test_identical_members_have_zero_diversity() -> None:
    z, y = _random(1, 3, 20, 4, seed=3)
    same = z.expand(4, 3, 20, 4)
    for fn in (cross_entropy_terms, brier_terms, zero_one_terms):
        dec = fn(same, y)
        assert dec.means()["diversity"] == pytest.approx(0.0, abs=1e-12)
        assert dec.means()["loss"] == pytest.approx(dec.means()["member_loss"], abs=TOL)


def test_one_member_is_its_own_ensemble() -> None:
    z, y = _random(1, 4, 25, 3, seed=4)
    for fn in (cross_entropy_terms, brier_terms, zero_one_terms):
        t = fn(z, y).means()
        assert t["diversity"] == pytest.approx(0.0, abs=1e-12)
        assert t["loss"] == pytest.approx(t["bias"] + t["variance"], abs=TOL)


def test_hand_computed_two_members_two_classes() -> None:
    # q1 = (0.8, 0.2), q2 = (0.4, 0.6), label 0, one draw
    z = torch.tensor([[[[0.8, 0.2]]], [[[0.4, 0.6]]]], dtype=torch.float64).log()  # exact inputs
    y = torch.tensor([0])
    # geometric mean sqrt(.32), sqrt(.12) -> normalised (0.6202041029, 0.3797958971)
    ce = cross_entropy_terms(z, y).means()
    assert ce["loss"] == pytest.approx(-math.log(0.6202041029), abs=1e-9)  # 0.4777066569
    assert ce["member_loss"] == pytest.approx((-math.log(0.8) - math.log(0.4)) / 2, abs=1e-9)  # 0.5697171416
    # KL(q̄||q1) = 0.0856883419, KL(q̄||q2) = 0.0983326274, mean 0.0920104847 = -ln(sqrt(.32) + sqrt(.12))
    assert ce["diversity"] == pytest.approx(0.0920104847, abs=1e-9)
    assert ce["bias"] is None and ce["variance"] is None
    # Brier: p̄ = (0.6, 0.4): loss 0.4² + 0.4² = 0.32; members 0.08 and 0.72; spread 0.08 each
    br = brier_terms(z, y).means()
    assert (br["loss"], br["member_loss"], br["diversity"]) == pytest.approx((0.32, 0.40, 0.08), abs=1e-9)
    # 0/1: members predict 0 (right) and 1 (wrong); the 1-1 vote tie goes to class 0, which is right
    zo = zero_one_terms(z, y).means()
    assert (zo["loss"], zo["member_loss"], zo["diversity"]) == pytest.approx((0.0, 0.5, 0.5))


def test_hand_computed_bias_and_variance_over_two_draws() -> None:
    # one member, draws (0.8, 0.2) and (0.4, 0.6), label 0: the central model is their geometric mean
    z = torch.tensor([[[[0.8, 0.2]], [[0.4, 0.6]]]], dtype=torch.float64).log()
    t = cross_entropy_terms(z, torch.tensor([0])).means()
    assert t["bias"] == pytest.approx(0.4777066569, abs=1e-9)
    assert t["variance"] == pytest.approx(0.0920104847, abs=1e-9)
    assert t["loss"] == pytest.approx(0.5697171416, abs=1e-9)
    # Brier: E q = (0.6, 0.4): bias 0.32, variance (0.08 + 0.08) / 2
    b = brier_terms(z, torch.tensor([0])).means()
    assert (b["bias"], b["variance"], b["loss"]) == pytest.approx((0.32, 0.08, 0.40), abs=1e-9)


def test_single_draw_gives_single_run_form_with_reason() -> None:
    z, y = _random(3, 1, 30, 4, seed=5)
    for fn in (cross_entropy_terms, brier_terms, zero_one_terms):
        dec = fn(z[:, 0], y)  # (M, N, K): one draw per member
        t = dec.means()
        assert t["bias"] is None and t["variance"] is None
        assert "2 draws" in dec.reason and "teachers.*.seeds" in dec.reason
        assert t["loss"] == pytest.approx(t["member_loss"] - t["diversity"], abs=TOL)
    diag = diagnose(z[:, 0], y, member_names=["a", "b", "c"])
    assert "2 draws" in diag["reason"]
    assert diag["combiners"]["mean_logit"]["terms"]["bias"] is None
    assert diag["combiners"]["mean_logit"]["per_class"]["bias"] is None
    json.dumps(diag, allow_nan=False)
    assert "bias" not in set(to_frames(diag)["terms"]["term"])


def test_majority_vote_diversity_effect_can_be_negative() -> None:
    # Each example has exactly 1 of 3 members right, so every member is right on a third of the
    # examples, but the vote (2 wrong against 1) is always wrong: diversity-effect 2/3 - 1 = -1/3.
    right = [[0, 1, 1], [1, 0, 1], [1, 1, 0]]  # predicted class per (member, example); label 0
    z = torch.zeros(3, 1, 3, 2)
    for i in range(3):
        for x in range(3):
            z[i, 0, x, right[i][x]] = 1.0
    t = zero_one_terms(z, torch.zeros(3, dtype=torch.long)).means()
    assert t["member_loss"] == pytest.approx(2 / 3)
    assert t["loss"] == pytest.approx(1.0)
    assert t["diversity"] == pytest.approx(-1 / 3)


def test_ties_go_to_the_lowest_class() -> None:
    # vote: members predict 2, 1, 1, 2 -> tie between 1 and 2 -> 1 (right for label 1)
    # mode over draws: member predicts 2, 0 over two draws -> tie -> 0 (wrong for label 1)
    z = torch.zeros(4, 2, 1, 3)
    for i, c in enumerate([2, 1, 1, 2]):
        z[i, :, 0, c] = 1.0
    t = zero_one_terms(z, torch.tensor([1])).means()
    assert t["loss"] == 0.0
    one = torch.zeros(1, 2, 1, 3)
    one[0, 0, 0, 2] = one[0, 1, 0, 0] = 1.0
    t = zero_one_terms(one, torch.tensor([1])).means()
    assert t["bias"] == 1.0 and t["variance"] == 0.0
    # a tie of logits within a member: argmax takes the lowest class
    flat = torch.zeros(1, 2, 1, 3)
    assert zero_one_terms(flat, torch.tensor([0])).means()["loss"] == 0.0


def test_per_class_means_average_back_to_overall() -> None:
    z, y = _random(3, 2, 60, 4, seed=6)
    counts = torch.bincount(y, minlength=5).tolist()  # class 4 has no example
    for dec in decompose(z, y).values():
        per_class = dec.per_class(y, 5)
        for term, overall in dec.means().items():
            values = per_class[term]
            assert values[4] is None
            weighted = sum(v * c for v, c in zip(values[:4], counts[:4])) / sum(counts)
            assert weighted == pytest.approx(overall, abs=TOL)
            # and each class mean is a plain mean over that class's examples
            mask = y == 1
            assert values[1] == pytest.approx(float(dec.per_example[term][mask].mean()), abs=TOL)


def test_growth_adds_members_in_val_order() -> None:
    z, y = _random(3, 2, 40, 4, seed=7)
    val = z[:, :, :10].clone()
    val[1] *= 0.0  # uniform member: val NLL ln 4 ...
    val[2] = 20 * torch.nn.functional.one_hot(y[:10], 4)  # ... a perfect one
    val_y = y[:10]
    order = order_by_val_nll(val, val_y)
    assert order[0] == 2
    # independent val NLL per member
    ce = torch.nn.functional.cross_entropy
    nll = [sum(ce(val[i, j], val_y).item() for j in range(2)) / 2 for i in range(3)]
    assert order == sorted(range(3), key=lambda i: nll[i])
    rows = diversity_growth(z, y, order)
    assert [r["members"] for r in rows] == [1, 2, 3] and [r["added"] for r in rows] == order
    assert rows[0]["diversity"] == pytest.approx(0.0, abs=1e-12)
    full = cross_entropy_terms(z, y).means()
    assert rows[-1]["loss"] == pytest.approx(full["loss"], abs=TOL)
    assert rows[1]["loss"] == pytest.approx(cross_entropy_terms(z[order[:2]], y).means()["loss"], abs=TOL)
    with pytest.raises(ConfigError):
        diversity_growth(z, y, [0, 0, 1])


def test_student_bias_and_variance_over_seeds() -> None:
    z, y = _random(1, 3, 30, 4, seed=8)
    steady = z[0, :1].expand(3, 30, 4)  # same predictions for every seed: no variance
    noisy = student_terms(z[0], y)["mean_logit"].means()
    assert student_terms(steady, y)["mean_logit"].means()["variance"] == pytest.approx(0.0, abs=1e-12)
    assert noisy["variance"] > 0.01
    assert noisy["loss"] == pytest.approx(noisy["bias"] + noisy["variance"], abs=TOL)
    assert noisy["diversity"] == pytest.approx(0.0, abs=1e-12)
    single = student_terms([z[0, 0]], y)
    for dec in single.values():
        assert dec.means()["variance"] is None
        assert "student.seeds" in dec.reason


def test_error_correlation_and_disagreement() -> None:
    import numpy as np
    z, y = _random(3, 2, 40, 3, seed=9)
    z[2, 1] = 10 * torch.nn.functional.one_hot(y, 3)  # member 2 never wrong in draw 1: undefined there
    corr = error_correlation(z, y)
    err = (z.argmax(-1) != y).double().numpy()
    expected01 = np.mean([np.corrcoef(err[0, j], err[1, j])[0, 1] for j in range(2)])
    expected02 = np.corrcoef(err[0, 0], err[2, 0])[0, 1]  # draw 1 left out
    assert float(corr[0, 1]) == pytest.approx(expected01, abs=TOL)
    assert float(corr[1, 0]) == pytest.approx(expected01, abs=TOL)
    assert float(corr[0, 2]) == pytest.approx(expected02, abs=TOL)
    assert torch.diagonal(corr).tolist() == [1.0, 1.0, 1.0]
    # constant in every draw: NaN, reported as None in the JSON
    z[2, 0] = z[2, 1]
    assert math.isnan(float(error_correlation(z, y)[0, 2]))
    diag = diagnose(z, y, member_names=["a", "b", "c"])
    assert diag["pairwise"]["error_correlation"][0][2] is None
    pred = z.argmax(-1)
    dis = disagreement(z)
    assert float(dis[0, 1]) == pytest.approx(
        sum(int(pred[0, j, x] != pred[1, j, x]) for j in range(2) for x in range(40)) / 80)
    assert torch.diagonal(dis).tolist() == [0.0, 0.0, 0.0]


def test_calibration_bins_and_ece() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    cal = calibration(probs, torch.tensor([0, 1, 1, 1]), n_bins=4)
    assert cal["count"] == [0, 0, 2, 2]
    # (0.75, 1]: conf 0.85 acc 0.5; (0.5, 0.75]: conf 0.65 acc 1.0 -> ECE 2/4*0.35 + 2/4*0.35
    assert cal["ece"] == pytest.approx(0.35)
    assert cal["accuracy"][2:] == pytest.approx([1.0, 0.5])
    # on random predictions: the same ECE as core.evaluate, one set or many at once
    z, y = _random(4, 1, 200, 5, seed=14)
    probs = z[:, 0].double().softmax(-1)
    expected = [probs_metrics(p, y)["ece"] for p in probs]
    assert calibration(probs[0], y)["ece"] == pytest.approx(expected[0], abs=1e-12)
    assert ece_many(probs, y).tolist() == pytest.approx(expected, abs=1e-12)


def test_diagnose_dict_and_frames() -> None:
    z, y = _random(3, 2, 50, 4, seed=10)
    gen = torch.Generator().manual_seed(11)
    students = {"kd": torch.randn(3, 50, 4, generator=gen), "scratch": [torch.randn(50, 4, generator=gen)]}
    diag = diagnose(z, y, member_names=["a", "b", "c"], val_logits=z[:, :, :20], val_y=y[:20],
                    students=students, class_names=["w", "x", "y", "z"])
    text = json.dumps(diag, allow_nan=False)
    assert len(text) < 30_000  # summaries only, no per-example arrays
    assert set(diag) == {"version", "members", "draws", "examples", "classes", "class_names", "class_counts",
                         "reason", "note", "combiners", "growth", "pairwise", "calibration", "member_scores",
                         "students"}
    assert set(diag["combiners"]) == {"mean_logit", "mean_prob", "vote"}
    terms = diag["combiners"]["mean_logit"]["terms"]
    assert terms["loss"] == pytest.approx(terms["bias"] + terms["variance"] - terms["diversity"], abs=TOL)
    assert diag["growth"]["by"] == "val_nll" and len(diag["growth"]["rows"]) == 3
    assert diag["students"]["kd"]["seeds"] == 3 and diag["students"]["kd"]["reason"] is None
    assert diag["students"]["scratch"]["combiners"]["mean_logit"]["terms"]["variance"] is None
    score = diag["member_scores"][1]
    per_draw = [logits_metrics(z[1, j], y) for j in range(2)]
    assert score["test_nll"] == pytest.approx(sum(p["nll"] for p in per_draw) / 2, abs=TOL)
    assert score["test_acc"] == pytest.approx(sum(p["acc"] for p in per_draw) / 2, abs=TOL)
    assert score["test_ece"] == pytest.approx(sum(p["ece"] for p in per_draw) / 2, abs=TOL)
    ens = logits_metrics(z.double().log_softmax(-1).mean(dim=(0, 1)), y)
    assert diag["calibration"]["mean_logit"]["ece"] == pytest.approx(ens["ece"], abs=TOL)
    frames = to_frames(diag)
    columns = {"terms": TERM_COLUMNS, "per_draw": PER_DRAW_COLUMNS, "growth": GROWTH_COLUMNS,
               "pairwise": PAIRWISE_COLUMNS, "reliability": RELIABILITY_COLUMNS, "members": MEMBER_COLUMNS}
    for name, cols in columns.items():
        assert list(frames[name].columns) == cols
        assert len(frames[name]) > 0
    t = frames["terms"]
    assert list(TERM_COLUMNS) == ["subject", "combiner", "loss_name", "term", "class", "class_index", "value"]
    assert set(t["subject"]) == {"ensemble", "kd", "scratch"}
    row = t[(t.subject == "ensemble") & (t.combiner == "mean_logit") & (t.term == "bias")
            & (t["class"] == "all")]
    assert float(row["value"].iloc[0]) == pytest.approx(terms["bias"])
    assert set(t[t.class_index >= 0]["class"]) <= {"w", "x", "y", "z"}
    examples = per_example_frame(decompose(z, y), y)
    assert len(examples[(examples.combiner == "vote") & (examples.term == "loss")]) == 50


def test_member_and_student_reliability_pool_draws_and_seeds() -> None:
    z, y = _random(2, 3, 40, 4, seed=15)
    students = {"kd": torch.randn(2, 40, 4, generator=torch.Generator().manual_seed(16))}
    cal = diagnose(z, y, member_names=["a", "b"], students=students, n_bins=10)["calibration"]
    assert set(cal["members"]) == {"a", "b"} and set(cal["students"]) == {"kd"}
    for bins in cal["members"].values():
        assert sum(bins["count"]) == 3 * 40 and len(bins["count"]) == 10
    assert sum(cal["students"]["kd"]["count"]) == 2 * 40
    # pooled = the bins of the draws' probabilities concatenated, labels repeated
    cat = torch.cat([z[1, j].double().softmax(-1) for j in range(3)])
    expected = calibration(cat, y.repeat(3), n_bins=10)
    assert cal["members"]["b"]["count"] == expected["count"]
    assert cal["members"]["b"]["ece"] == pytest.approx(expected["ece"], abs=1e-12)
    assert pooled_calibration(z[1].double().softmax(-1), y, 10)["ece"] == pytest.approx(expected["ece"], abs=1e-12)
    assert set(cal["members"]["a"]) == set(cal["mean_logit"])  # same format as the ensembles' entries


def test_pooled_ece_of_perfectly_calibrated_predictions_is_zero() -> None:
    # draw 0: 10 examples at 0.8 on class 0 (8 right), 10 at 0.7 on class 1 (7 right);
    # draw 1: every example at 0.55 on class 0 (11 of 20 right). Each draw, so the pool, is calibrated.
    y = torch.tensor([0] * 8 + [1] * 2 + [1] * 7 + [0] * 3)
    p = torch.tensor([[0.8, 0.2]] * 10 + [[0.3, 0.7]] * 10, dtype=torch.float64)
    q = torch.tensor([[0.55, 0.45]] * 20, dtype=torch.float64)
    logits = torch.stack([torch.stack([p.log(), q.log()])] * 2)  # (2 members, 2 draws, 20, 2)
    diag = diagnose(logits, y, member_names=["a", "b"], students={"kd": torch.stack([p, q, p]).log()})
    cal = diag["calibration"]
    for bins in [*cal["members"].values(), cal["students"]["kd"]]:
        assert bins["ece"] == pytest.approx(0.0, abs=1e-9)
    assert sum(cal["students"]["kd"]["count"]) == 3 * 20
    # the per-draw mean ECE is 0 too, the pooled bins hold both draws' confidences
    assert diag["member_scores"][0]["test_ece"] == pytest.approx(0.0, abs=1e-9)
    assert sum(c for c, f in zip(cal["members"]["a"]["count"], cal["members"]["a"]["confidence"])
               if f is not None and abs(f - 0.55) < 1e-9) == 20


def test_single_draw_member_ece_matches_member_scores() -> None:
    z, y = _random(3, 1, 60, 5, seed=18)
    diag = diagnose(z, y, member_names=["a", "b", "c"])
    for score in diag["member_scores"]:
        assert diag["calibration"]["members"][score["name"]]["ece"] == pytest.approx(score["test_ece"], abs=1e-12)


def test_reliability_frame_has_ensembles_members_and_students() -> None:
    z, y = _random(2, 2, 30, 3, seed=19)
    students = {"kd": torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(20))}
    diag = diagnose(z, y, member_names=["a", "b"], students=students, n_bins=5)
    rel = to_frames(diag)["reliability"]
    assert list(rel.columns) == RELIABILITY_COLUMNS
    assert set(rel["subject_kind"]) == {"ensemble", "member", "student"}
    ens = rel[rel.subject_kind == "ensemble"]
    assert set(ens["combiner"]) == {"mean_logit", "mean_prob"} and len(ens) == 2 * 5
    assert set(rel[rel.subject_kind == "member"]["subject"]) == {"a", "b"}
    assert rel[rel.subject_kind == "member"].groupby("subject")["count"].sum().tolist() == [2 * 30, 2 * 30]
    assert rel[rel.subject_kind == "student"]["subject"].unique().tolist() == ["kd"]
    assert int(rel[rel.subject_kind == "student"]["count"].sum()) == 2 * 30


def test_pipeline_layout_and_uneven_draws() -> None:
    z, y = _random(2, 3, 20, 3, seed=12)
    flat = [z[0, 0], z[0, 1], z[0, 2], z[1, 0], z[1, 1]]  # member-major, 3 and 2 draws
    diag = diagnose(group_member_major(flat, [3, 2]), y, member_names=["a", "b"])
    assert diag["draws"] == 2 and "first 2" in diag["note"]
    expected = cross_entropy_terms(z[:, :2], y).means()["loss"]
    assert diag["combiners"]["mean_logit"]["terms"]["loss"] == pytest.approx(expected, abs=TOL)
    with pytest.raises(ConfigError):
        group_member_major(flat, [3, 3])


def test_bad_input_raises_user_errors() -> None:
    z, y = _random(2, 2, 10, 3, seed=13)
    with pytest.raises(ConfigError):
        diagnose(z, y, member_names=["only one"])
    with pytest.raises(DataError):
        diagnose(z, y + 3, member_names=["a", "b"])
    bad = z.clone()
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ConfigError):
        cross_entropy_terms(bad, y)
    with pytest.raises(ConfigError):
        diagnose(z, y, member_names=["a", "b"], students={"kd": torch.randn(2, 11, 3)})
