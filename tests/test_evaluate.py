"""Metrics of predictions and experiments, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from core.evaluate import (gain_recovery, gain_recovery_over_seeds, logits_metrics, mean_std,
                           probs_metrics, reliability)

# 4 examples, 2 classes; confidences 0.9, 0.8, 0.7, 0.6; the 0.8 one is wrong
PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
Y = torch.tensor([0, 1, 1, 1])


def test_probs_metrics_by_hand() -> None:
    m = probs_metrics(PROBS, Y, n_bins=4)
    assert m["acc"] == pytest.approx(0.75)
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.6)) / 4)
    # bins of width 0.25: (0.75, 1] holds 0.9 (right), 0.8 (wrong): acc 0.5, conf 0.85 -> 2/4 * 0.35
    #                     (0.5, 0.75] holds 0.7, 0.6 (both right): acc 1.0, conf 0.65 -> 2/4 * 0.35
    assert m["ece"] == pytest.approx(0.35)
    # per example sum_k (p_k - onehot_k)^2: 0.02, 1.28, 0.18, 0.32
    assert m["brier"] == pytest.approx(0.45)
    # one bin (0.5, 1]: mean confidence 0.75 equals accuracy 0.75
    assert probs_metrics(PROBS, Y, n_bins=2)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_perfect_calibration_has_zero_ece() -> None:
    assert probs_metrics(torch.eye(3), torch.arange(3))["ece"] == 0.0
    probs = torch.tensor([[0.7, 0.3]] * 10, dtype=torch.float64)
    y = torch.tensor([0] * 7 + [1] * 3)  # 70% right at 70% confidence
    assert probs_metrics(probs, y)["ece"] == pytest.approx(0.0, abs=1e-12)


def test_nll_floor_keeps_zero_probability_finite() -> None:
    m = probs_metrics(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1]))
    assert m["nll"] == pytest.approx(-math.log(1e-12) / 2)


def test_logits_metrics_match_probs_metrics_on_softmax() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200, 5, generator=gen)
    y = torch.randint(0, 5, (200,), generator=gen)
    a = logits_metrics(logits, y)
    b = probs_metrics(logits.double().softmax(dim=1), y)
    assert a.keys() == b.keys() == {"acc", "nll", "ece", "brier"}
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6)


def test_reliability_bins() -> None:
    r = reliability(PROBS, Y, n_bins=4)
    assert sum(r["count"]) == 4
    assert r["count"] == [0, 0, 2, 2]
    assert r["bin_lower"] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert r["bin_upper"] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert r["confidence"][:2] == [None, None]  # empty bins
    assert r["confidence"][2:] == pytest.approx([0.65, 0.85])
    assert r["accuracy"][2:] == pytest.approx([1.0, 0.5])
    big = reliability(torch.rand(300, 4).softmax(dim=1), torch.randint(0, 4, (300,)))
    assert sum(big["count"]) == 300 and len(big["count"]) == 15


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        probs_metrics(PROBS, Y[:3])
    with pytest.raises(ValueError):
        logits_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_mean_std() -> None:
    s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))  # ddof=1
    assert s["n"] == 4
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    with pytest.raises(ValueError):
        mean_std([])


def test_gain_recovery() -> None:
    assert gain_recovery(0.73, 0.70, 0.75) == pytest.approx(0.6)
    assert gain_recovery(0.70, 0.70, 0.75) == pytest.approx(0.0)
    assert gain_recovery(0.76, 0.70, 0.75) == pytest.approx(1.2)  # student beats the ensemble
    assert gain_recovery(0.73, 0.75, 0.75) is None  # no gain to recover
    assert gain_recovery(0.73, 0.76, 0.75) is None  # ensemble worse than scratch


def test_gain_recovery_over_seeds_pairs_by_index() -> None:
    r = gain_recovery_over_seeds([0.71, 0.75], [0.70, 0.74], 0.76)
    # seed 0: 0.01 / 0.06; seed 1: 0.01 / 0.02 (any other pairing gives other numbers)
    assert r["per_seed"] == pytest.approx([1 / 6, 0.5])
    assert r["mean"] == pytest.approx((1 / 6 + 0.5) / 2)
    assert r["std"] == pytest.approx(math.sqrt(2) * (0.5 - 1 / 6) / 2)
    assert r["n"] == 2
    assert r["of_means"] == pytest.approx((0.73 - 0.72) / (0.76 - 0.72))


def test_gain_recovery_over_seeds_skips_undefined_seeds() -> None:
    r = gain_recovery_over_seeds([0.72, 0.74], [0.70, 0.76], 0.75)
    assert r["per_seed"][0] == pytest.approx(0.4) and r["per_seed"][1] is None
    assert r["n"] == 1 and r["mean"] == pytest.approx(0.4) and r["std"] == 0.0
    none = gain_recovery_over_seeds([0.7], [0.8], 0.75)
    assert none["mean"] is None and none["n"] == 0 and none["of_means"] is None
    with pytest.raises(ValueError):
        gain_recovery_over_seeds([0.7, 0.71], [0.7], 0.75)
