"""Ensemble combiners: known answers on hand-made logits, val-only fitting, and refusal of bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.ensemble import (Combined, combine, combiner_doc, dirichlet_total_variance, fits_on_val,
                           list_combiners, register_combiner, uncertainty_weights)
from core.ensemble import registry as ens_registry
from core.ensemble.uncertainty import CONCENTRATION_GRID
from core.errors import ConfigError

ALL = ["mean_prob", "mean_logit", "vote", "learned", "uncertainty", "stacking"]
FITTED = ["learned", "uncertainty", "stacking"]


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """(N, K) logits whose softmax is `probs`."""
    return torch.tensor(probs, dtype=torch.float32).log()


def toy(m: int = 3, n_val: int = 120, n_test: int = 80, k: int = 4, seed: int = 0):
    """Member logits for val/test/train with a shared signal, and the val labels."""
    g = torch.Generator().manual_seed(seed)
    out, labels = {}, {}
    for split, n in (("train", 50), ("val", n_val), ("test", n_test)):
        y = torch.randint(0, k, (n,), generator=g)
        out[split] = 2.0 * F.one_hot(y, k).float() + 1.5 * torch.randn(m, n, k, generator=g)
        labels[split] = y
    return out, labels


def accuracy(p: torch.Tensor, y: torch.Tensor) -> float:
    return float((p.argmax(1) == y).float().mean())


def nll(p: torch.Tensor, y: torch.Tensor) -> float:
    return float(-p.gather(1, y[:, None]).log().mean())


def test_registry_lists_every_scheme_with_a_formula():
    assert set(ALL) <= set(list_combiners())
    assert list_combiners()[:2] == ["mean_prob", "mean_logit"]
    for name in ALL:
        doc = combiner_doc(name)
        assert "=" in doc and len(doc.splitlines()) >= 3, name
        assert fits_on_val(name) == (name in FITTED)


def test_adding_a_scheme_is_one_function(monkeypatch):
    monkeypatch.setattr(ens_registry._COMBINERS, "_entries", dict(ens_registry._COMBINERS._entries))

    @register_combiner("first_member")
    def first_member(logits, val_labels=None):
        """p = softmax(z_1)."""
        return Combined(probs={s: z[0].softmax(-1) for s, z in logits.items()})

    z, _ = toy()
    assert "first_member" in list_combiners()
    assert torch.allclose(combine("first_member", z).probs["test"], z["test"][0].softmax(-1))
    assert combiner_doc("first_member") == "p = softmax(z_1)."


def test_mean_logit_and_mean_prob_by_hand():
    # Member A says (0.9, 0.1), member B (0.5, 0.5).
    z = {"test": torch.stack([logits_of([[0.9, 0.1]]), logits_of([[0.5, 0.5]])])}
    # Arithmetic mean: (0.7, 0.3). Geometric: sqrt(.45) : sqrt(.05) = 3 : 1 -> (0.75, 0.25).
    assert torch.allclose(combine("mean_prob", z).probs["test"], torch.tensor([[0.7, 0.3]]), atol=1e-6)
    assert torch.allclose(combine("mean_logit", z).probs["test"], torch.tensor([[0.75, 0.25]]), atol=1e-6)


def test_mean_logit_ignores_each_members_logit_offset():
    z, _ = toy()
    shifted = {s: t + torch.randn(t.shape[0], t.shape[1], 1) * 10 for s, t in z.items()}
    a, b = combine("mean_logit", z).probs["test"], combine("mean_logit", shifted).probs["test"]
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a, z["test"].mean(0).softmax(-1), atol=1e-5)


def test_vote_counts_smoothing_and_tie_break():
    k, m, lam = 3, 3, 0.5
    # Example 0: votes 0, 0, 1.  Example 1: every member votes 2.
    p = torch.tensor([
        [[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]],
        [[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]],
        [[0.2, 0.7, 0.1], [0.3, 0.3, 0.4]],
    ])
    out = combine("vote", {"test": p.log()}).probs["test"]
    smooth = 0.5 * p.mean(0) + 0.5 / k
    counts = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(out, (counts + lam * smooth) / (m + lam), atol=1e-6)
    assert out.argmax(1).tolist() == [0, 2]
    assert torch.all(out > 0)  # a wrong unanimous vote still has a finite NLL

    # Two members, one vote each: the tie goes to the class with the larger mean probability.
    tie = torch.stack([logits_of([[0.55, 0.45]]), logits_of([[0.05, 0.95]])])
    probs = combine("vote", {"test": tie}).probs["test"]
    assert probs.argmax(1).item() == 1
    assert probs[0, 1] - probs[0, 0] < 0.5 / 2.5  # smoothing moves less than one vote


def test_dirichlet_variance_by_hand():
    # Beta(3, 1) per component: 3 / (16 * 5) = 0.0375, total over 2 classes 0.075.
    v = dirichlet_total_variance(torch.tensor([1.0, 0.0]), c=2.0)
    assert v.item() == pytest.approx(0.075, abs=1e-7)
    # c = 0: flat Dirichlet whatever p says.
    flat = dirichlet_total_variance(torch.tensor([0.9, 0.1]), 0.0)
    assert flat.item() == pytest.approx(2 * 1 / 12, abs=1e-7)


def test_uncertainty_weights_are_uniform_when_confidences_are_equal():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(50, 6, generator=g).mul(3).softmax(-1)  # (N, K)
    # Each member sees the same probability vector, classes permuted differently per member.
    members = torch.stack([base[:, torch.randperm(6, generator=g)] for _ in range(4)])
    for c in CONCENTRATION_GRID:
        w = uncertainty_weights(members, c)
        assert torch.allclose(w, torch.full_like(w, 0.25), atol=1e-6), c


def test_uncertainty_prefers_the_confident_member_and_beats_uniform_on_val():
    g = torch.Generator().manual_seed(2)
    k, n = 4, 300
    logits, labels = {}, {}
    for split in ("val", "test"):
        y = torch.randint(0, k, (n,), generator=g)
        # On each example one member is sharp and right, the other flat and often wrong.
        sharp_first = torch.rand(n, generator=g) < 0.5
        sharp = 6.0 * F.one_hot(y, k).float()
        flat = 0.3 * torch.randn(n, k, generator=g)
        a = torch.where(sharp_first[:, None], sharp, flat)
        b = torch.where(sharp_first[:, None], flat, sharp)
        logits[split], labels[split] = torch.stack([a, b]), y
    out = combine("uncertainty", logits, labels["val"])
    assert out.info["concentration"] > 0
    assert out.info["val_nll"] < out.info["val_nll_uniform"]
    w = out.weights["test"]
    assert w.shape == (n, 2)
    assert torch.allclose(w.sum(1), torch.ones(n), atol=1e-6)
    sharp_member = (logits["test"].softmax(-1).amax(-1).argmax(0))  # (N,) which member is sharp
    assert torch.all(w.gather(1, sharp_member[:, None]) > 0.5)
    uniform = combine("mean_logit", logits).probs["test"]
    assert nll(out.probs["test"], labels["test"]) < nll(uniform, labels["test"])


def test_learned_weights_move_to_the_accurate_member():
    g = torch.Generator().manual_seed(3)
    k, n = 4, 200
    logits, labels = {}, {}
    for split in ("val", "test"):
        y = torch.randint(0, k, (n,), generator=g)
        good = 3.0 * F.one_hot(y, k).float() + torch.randn(n, k, generator=g)
        noise = 3.0 * torch.randn(n, k, generator=g)
        logits[split], labels[split] = torch.stack([good, noise]), y
    out = combine("learned", logits, labels["val"])
    w = out.global_weights
    assert w.shape == (2,) and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[0] > 0.8 > 0.2 > w[1]
    assert out.weights is None
    assert out.info["val_nll"] < out.info["val_nll_uniform"]
    assert accuracy(out.probs["test"], labels["test"]) > accuracy(combine("mean_logit", logits).probs["test"],
                                                                 labels["test"])


def test_stacking_undoes_a_member_with_permuted_classes():
    g = torch.Generator().manual_seed(4)
    k, n = 5, 400
    logits, labels = {}, {}
    for split in ("val", "test"):
        y = torch.randint(0, k, (n,), generator=g)
        a = 1.5 * F.one_hot(y, k).float() + torch.randn(n, k, generator=g)
        b = 1.5 * F.one_hot(y, k).float() + torch.randn(n, k, generator=g)
        b = b.roll(1, dims=1)  # member B reports class c in column c + 1
        logits[split], labels[split] = torch.stack([a, b]), y
    stack = combine("stacking", logits, labels["val"]).probs["test"]
    mean = combine("mean_logit", logits).probs["test"]
    single = logits["test"][0].softmax(-1)
    y = labels["test"]
    assert accuracy(stack, y) > accuracy(mean, y) + 0.1
    assert accuracy(stack, y) > accuracy(single, y)  # it uses both members, not just A
    assert nll(stack, y) < nll(mean, y)


@pytest.mark.parametrize("scheme", ALL)
def test_every_split_gets_probabilities_that_sum_to_one(scheme):
    z, labels = toy()
    out = combine(scheme, z, labels["val"])
    assert set(out.probs) == set(z)
    for split, p in out.probs.items():
        assert p.shape == (z[split].shape[1], 4) and p.dtype == torch.float32
        assert torch.all(p >= 0)
        assert torch.allclose(p.sum(1), torch.ones(len(p)), atol=1e-5), split
    if out.weights is not None:
        assert set(out.weights) == set(z)
        for split, w in out.weights.items():
            assert w.shape == (z[split].shape[1], 3)
            assert torch.allclose(w.sum(1), torch.ones(len(w)), atol=1e-5)


@pytest.mark.parametrize("scheme", ALL)
def test_the_fitted_rule_reproduces_every_split(scheme):
    # Consistent and live teaching apply the rule to logits that were not among the splits.
    z, labels = toy()
    out = combine(scheme, z, labels["val"])
    for split, p in out.probs.items():
        assert torch.allclose(out.predict(z[split]), p, atol=1e-5), split
    fresh = torch.randn(3, 7, 4)
    assert torch.allclose(out.predict(fresh).sum(1), torch.ones(7), atol=1e-5)


@pytest.mark.parametrize("scheme", FITTED)
def test_fitting_uses_only_val(scheme):
    z, labels = toy()
    garbage = dict(z, test=torch.randn_like(z["test"]) * 100, train=-z["train"])
    a = combine(scheme, z, labels["val"])
    b = combine(scheme, garbage, labels["val"])
    c = combine(scheme, {"val": z["val"]}, labels["val"])
    for other in (b, c):
        assert torch.equal(a.probs["val"], other.probs["val"])
        if a.global_weights is not None:
            assert torch.equal(a.global_weights, other.global_weights)
        for key in ("concentration", "val_nll"):
            assert a.info.get(key) == other.info.get(key)
    # Deterministic: a second fit gives the same bits.
    assert torch.equal(combine(scheme, z, labels["val"]).probs["test"], a.probs["test"])


@pytest.mark.parametrize("scheme", FITTED)
def test_fitting_works_under_inference_mode(scheme):
    z, labels = toy()
    with torch.inference_mode():
        out = combine(scheme, z, labels["val"])
    assert torch.allclose(out.probs["test"], combine(scheme, z, labels["val"]).probs["test"])


def test_a_single_member_passes_through():
    z, labels = toy(m=1)
    for scheme in ("mean_prob", "mean_logit", "learned", "uncertainty"):
        p = combine(scheme, z, labels["val"]).probs["test"]
        assert torch.allclose(p, z["test"][0].softmax(-1), atol=1e-5), scheme


def test_members_as_a_list_of_tensors():
    z, labels = toy()
    as_list = {s: list(t.unbind(0)) for s, t in z.items()}
    assert torch.equal(combine("mean_logit", as_list).probs["test"], combine("mean_logit", z).probs["test"])


# ---- bad input ---------------------------------------------------------------------------------------

def test_unknown_scheme_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        combine("median", toy()[0])
    assert e.value.field == "ensemble.scheme"
    assert "mean_logit" in str(e.value) and "stacking" in str(e.value)
    with pytest.raises(ConfigError):
        combiner_doc("median")


@pytest.mark.parametrize("scheme", FITTED)
def test_too_small_val_asks_for_a_larger_val_fraction(scheme):
    z, labels = toy(n_val=7, k=4)  # fewer than 2 x 4
    with pytest.raises(ConfigError) as e:
        combine(scheme, z, labels["val"])
    assert e.value.field == "data.val_fraction" and "raise data.val_fraction" in str(e.value)


@pytest.mark.parametrize("scheme", FITTED)
def test_single_class_val_cannot_be_fitted(scheme):
    z, labels = toy()
    with pytest.raises(ConfigError) as e:
        combine(scheme, z, torch.zeros_like(labels["val"]))
    assert e.value.field == "data.val_fraction" and "cannot be fitted" in str(e.value)


@pytest.mark.parametrize("scheme", FITTED)
def test_fitting_without_val_says_so(scheme):
    z, labels = toy()
    with pytest.raises(ConfigError) as e:
        combine(scheme, z)
    assert e.value.field == "data.val_fraction"
    with pytest.raises(ConfigError):
        combine(scheme, {"test": z["test"]}, labels["val"])


def test_fixed_schemes_need_no_val():
    z, _ = toy()
    for scheme in ("mean_prob", "mean_logit", "vote"):
        assert set(combine(scheme, {"test": z["test"]}).probs) == {"test"}


def test_members_with_different_class_counts():
    with pytest.raises(ConfigError) as e:
        combine("mean_logit", {"test": [torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 3)]})
    assert e.value.field == "teachers" and "member 2" in str(e.value)
    with pytest.raises(ConfigError) as e:
        combine("mean_logit", {"val": torch.randn(2, 5, 4), "test": torch.randn(2, 5, 3)})
    assert e.value.field == "teachers"


def test_label_count_or_range_mismatch():
    z, labels = toy()
    with pytest.raises(ConfigError) as e:
        combine("learned", z, labels["val"][:-1])
    assert e.value.field == "teachers"
    with pytest.raises(ConfigError) as e:
        combine("learned", z, labels["val"] + 4)
    assert e.value.field == "teachers"


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_diverged_member_is_named(bad):
    z, labels = toy()
    z["test"][1, 3, 2] = bad
    with pytest.raises(ConfigError) as e:
        combine("mean_logit", z, labels["val"])
    msg = str(e.value)
    assert e.value.field == "teachers"
    assert "member 1 " in msg and "'test'" in msg and "train.lr" in msg
