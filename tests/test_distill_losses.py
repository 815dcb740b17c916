"""Distillation losses: agreement with timm and the papers' reference code, identities, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.distill import dist_terms, dkd_parts, kd_loss, kd_loss_doc, list_kd_losses, pearson, soften
from core.errors import ConfigError

LOSSES = ["hinton", "dkd", "dist"]


def batch(n: int = 16, k: int = 7, seed: int = 0, dtype=torch.float32):
    """Student logits, teacher logits (sharper) and labels."""
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(n, k, generator=g, dtype=dtype) * 2
    zt = torch.randn(n, k, generator=g, dtype=dtype) * 3
    y = torch.randint(0, k, (n,), generator=g)
    return zs, zt, y


def test_registry_and_docs():
    assert list_kd_losses()[:3] == LOSSES
    for name in LOSSES:
        assert "T^2" in kd_loss_doc(name) and "total" in kd_loss_doc(name)


# ---- Hinton ------------------------------------------------------------------------------------------

class _Slice(nn.Module):
    """A stand-in 'model' that returns one slice of its input, so timm sees chosen logits."""

    def __init__(self, index: int, k: int) -> None:
        super().__init__()
        self.index, self.num_classes, self.in_chans = index, k, 3
        self.pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
        self.dummy = nn.Parameter(torch.zeros(()))  # timm wants a parameter to train

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_hinton_kd_term_equals_timm_logit_distillation(T):
    from timm.task import LogitDistillationTask

    zs, zt, y = batch()
    k = zs.shape[1]
    task = LogitDistillationTask(_Slice(0, k), _Slice(1, k), criterion=nn.CrossEntropyLoss(),
                                 distill_loss_weight=1.0, task_loss_weight=0.0, temperature=T, verbose=False)
    ref = task(torch.stack([zs, zt], dim=1), y)
    ours = kd_loss("hinton", zs, zt.softmax(-1), y, T, alpha=1.0)
    assert ours["kd"].item() == pytest.approx(ref["kd_loss"].item(), abs=1e-6, rel=1e-6)
    assert ours["ce"].item() == pytest.approx(ref["task_loss"].item(), abs=1e-6)
    assert ours["loss"].item() == pytest.approx(ref["kd_loss"].item(), abs=1e-6, rel=1e-6)


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_hinton_is_batchmean_not_mean():
    zs, zt, _ = batch(k=9)
    T = 2.0
    ours = kd_loss("hinton", zs, zt, None, T, 1.0, target_kind="logits")["kd"]
    mean = F.kl_div((zs / T).log_softmax(-1), (zt / T).softmax(-1), reduction="mean") * T * T
    assert (ours / mean).item() == pytest.approx(9.0, rel=1e-5)


def test_hinton_scales_with_t_squared():
    zs, zt, _ = batch()
    for T in (1.0, 3.0, 10.0):
        kl = F.kl_div((zs / T).log_softmax(-1), (zt / T).softmax(-1), reduction="batchmean")
        kd = kd_loss("hinton", zs, zt, None, T, 1.0, target_kind="logits")["kd"]
        assert kd.item() == pytest.approx(T * T * kl.item(), rel=1e-5, abs=1e-7)


def test_total_is_alpha_mix_of_kd_and_ce():
    zs, zt, y = batch()
    out = kd_loss("hinton", zs, zt.softmax(-1), y, 4.0, 0.3)
    assert out["ce"].item() == pytest.approx(F.cross_entropy(zs, y).item(), abs=1e-6)
    assert out["loss"].item() == pytest.approx(0.3 * out["kd"].item() + 0.7 * out["ce"].item(), abs=1e-6)
    labels_only = kd_loss("hinton", zs, zt.softmax(-1), y, 4.0, 0.0)
    assert labels_only["loss"].item() == pytest.approx(out["ce"].item())


# ---- the probability target --------------------------------------------------------------------------

@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
def test_softened_probabilities_equal_logits_over_t(T):
    _, zt, _ = batch(dtype=torch.float64)
    assert torch.allclose(soften(zt.softmax(-1), T).exp(), (zt / T).softmax(-1), atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_probability_and_logit_targets_agree(name):
    zs, zt, y = batch()
    p = kd_loss(name, zs, zt.softmax(-1), y, 4.0, 0.9)
    z = kd_loss(name, zs, zt, y, 4.0, 0.9, target_kind="logits")
    for key in p:
        assert p[key].item() == pytest.approx(z[key].item(), abs=1e-5, rel=1e-5), key


@pytest.mark.parametrize("name", LOSSES)
def test_zero_probabilities_in_the_target_keep_gradients_finite(name):
    zs, zt, y = batch()
    p = zt.softmax(-1)
    p[:, 0] = 0.0
    p[0] = F.one_hot(y[0], p.shape[1]).float()  # an exactly one-hot row
    p = p / p.sum(1, keepdim=True)
    zs = zs.clone().requires_grad_(True)
    out = kd_loss(name, zs, p, y, 4.0, 0.9)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert torch.isfinite(zs.grad).all()


@pytest.mark.parametrize("name", LOSSES)
def test_example_weights_are_a_weighted_batch_mean(name):
    zs, zt, y = batch(n=12)
    target = zt.softmax(-1)
    plain = kd_loss(name, zs, target, y, 2.0, 0.5)
    ones = kd_loss(name, zs, target, y, 2.0, 0.5, weights=torch.full((12,), 3.0))
    for key in plain:  # uniform weights of any scale change nothing
        assert ones[key].item() == pytest.approx(plain[key].item(), abs=1e-5, rel=1e-5), key
    if name != "dist":  # per-example losses: zero weight = dropping the example
        w = torch.zeros(12)
        w[:5] = 1.0
        sub = kd_loss(name, zs[:5], target[:5], y[:5], 2.0, 0.5)
        weighted = kd_loss(name, zs, target, y, 2.0, 0.5, weights=w)
        for key in sub:
            assert weighted[key].item() == pytest.approx(sub[key].item(), abs=1e-5, rel=1e-5), key
    else:
        w = torch.rand(12, generator=torch.Generator().manual_seed(5)) + 0.1
        assert kd_loss(name, zs, target, y, 2.0, 0.5, weights=w)["inter"].item() != pytest.approx(
            plain["inter"].item(), rel=1e-4)


# ---- DKD ---------------------------------------------------------------------------------------------

def test_dkd_decomposition_identity():
    for seed in range(3):
        zs, zt, y = batch(n=64, k=10, seed=seed, dtype=torch.float64)
        log_ps, log_pt = zs.log_softmax(-1), zt.log_softmax(-1)
        tckd, nckd = dkd_parts(log_ps, log_pt, y)
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
        pt_gt = log_pt.exp().gather(1, y[:, None]).squeeze(1)
        assert torch.allclose(kl, tckd + (1 - pt_gt) * nckd, atol=1e-6)
        assert torch.all(tckd >= -1e-12) and torch.all(nckd >= -1e-12)


def _dkd_reference(zs, zt, y, alpha, beta, T):
    """The authors' dkd_loss (megvii-research/mdistiller), transcribed."""
    gt = F.one_hot(y, zs.shape[1]).bool()
    ps, pt = F.softmax(zs / T, dim=1), F.softmax(zt / T, dim=1)

    def cat_mask(t):
        return torch.cat([(t * gt).sum(1, keepdims=True), (t * ~gt).sum(1, keepdims=True)], dim=1)

    ps, pt = cat_mask(ps), cat_mask(pt)
    tckd = F.kl_div(torch.log(ps), pt, reduction="sum") * T ** 2 / y.shape[0]
    pt2 = F.softmax(zt / T - 1000.0 * gt, dim=1)
    log_ps2 = F.log_softmax(zs / T - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_ps2, pt2, reduction="sum") * T ** 2 / y.shape[0]
    return alpha * tckd + beta * nckd


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_matches_the_reference_implementation(T):
    zs, zt, y = batch(n=32, k=10)
    ours = kd_loss("dkd", zs, zt.softmax(-1), y, T, 1.0)
    ref = _dkd_reference(zs, zt, y, 1.0, 8.0, T)
    assert ours["kd"].item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert ours["kd"].item() == pytest.approx(ours["tckd"].item() + 8.0 * ours["nckd"].item(), rel=1e-6)
    other = kd_loss("dkd", zs, zt.softmax(-1), y, T, 1.0, dkd_alpha=0.5, dkd_beta=2.0)
    assert other["kd"].item() == pytest.approx(_dkd_reference(zs, zt, y, 0.5, 2.0, T).item(), rel=1e-5)


def test_dkd_needs_labels():
    zs, zt, _ = batch()
    with pytest.raises(ConfigError) as e:
        kd_loss("dkd", zs, zt.softmax(-1), None, 4.0, 1.0)
    assert e.value.field == "distill.loss"


# ---- DIST --------------------------------------------------------------------------------------------

def _dist_reference(zs, zt, T, beta=1.0, gamma=1.0):
    """The authors' DIST loss (hunto/DIST_KD), transcribed."""
    def pear(a, b, eps=1e-8):
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    ys, yt = (zs / T).softmax(1), (zt / T).softmax(1)
    inter = T ** 2 * (1 - pear(ys, yt).mean())
    intra = T ** 2 * (1 - pear(ys.T, yt.T).mean())
    return beta * inter + gamma * intra


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dist_matches_the_reference_implementation(T):
    zs, zt, y = batch(n=32, k=10)
    ours = kd_loss("dist", zs, zt.softmax(-1), y, T, 1.0)
    assert ours["kd"].item() == pytest.approx(_dist_reference(zs, zt, T).item(), rel=1e-5, abs=1e-6)


def test_dist_is_zero_when_the_student_matches_the_teacher():
    _, zt, y = batch()
    shift = torch.randn(zt.shape[0], 1) * 5  # a per-row logit offset changes no probability
    for T in (1.0, 4.0):
        out = kd_loss("dist", zt + shift, zt.softmax(-1), y, T, 1.0)
        assert abs(out["kd"].item()) < 1e-5 * T * T


def test_pearson_and_dist_are_invariant_to_positive_affine_maps():
    g = torch.Generator().manual_seed(7)
    ps = torch.rand(20, 6, generator=g, dtype=torch.float64)
    pt = torch.rand(20, 6, generator=g, dtype=torch.float64)
    scale_row = torch.rand(20, 1, generator=g, dtype=torch.float64) * 5 + 0.1
    shift_row = torch.randn(20, 1, generator=g, dtype=torch.float64)
    scale_col = torch.rand(1, 6, generator=g, dtype=torch.float64) * 5 + 0.1
    shift_col = torch.randn(1, 6, generator=g, dtype=torch.float64)
    assert torch.allclose(pearson(ps, pt, 1), pearson(ps, scale_row * pt + shift_row, 1), atol=1e-10)
    assert torch.allclose(pearson(ps, pt, 0), pearson(scale_col * ps + shift_col, pt, 0), atol=1e-10)
    inter, intra = dist_terms(ps, pt)
    # 1e-6, not 1e-10: the 1e-8 guard in the denominator does not scale with the data.
    assert dist_terms(ps, scale_row * pt + shift_row)[0].item() == pytest.approx(inter.item(), abs=1e-6)
    assert dist_terms(ps, scale_col * pt + shift_col)[1].item() == pytest.approx(intra.item(), abs=1e-6)
    # A negative scale flips the correlation: not invariant, as it should not be.
    assert not torch.allclose(pearson(ps, pt, 1), pearson(ps, -pt, 1))
    # Weighted Pearson with equal weights is the plain one.
    assert torch.allclose(pearson(ps, pt, 0, weights=torch.full((20,), 2.0, dtype=torch.float64)),
                          pearson(ps, pt, 0), atol=1e-12)


# ---- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [0.0, -1.0, math.nan, math.inf])
def test_bad_temperature(T):
    zs, zt, y = batch()
    with pytest.raises(ConfigError) as e:
        kd_loss("hinton", zs, zt.softmax(-1), y, T, 0.9)
    assert e.value.field == "distill.temperature"


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_bad_alpha(alpha):
    zs, zt, y = batch()
    with pytest.raises(ConfigError) as e:
        kd_loss("hinton", zs, zt.softmax(-1), y, 4.0, alpha)
    assert e.value.field == "distill.alpha"


def test_unknown_loss_lists_the_choices():
    zs, zt, y = batch()
    with pytest.raises(ConfigError) as e:
        kd_loss("crd", zs, zt.softmax(-1), y, 4.0, 0.9)
    assert e.value.field == "distill.loss" and all(n in str(e.value) for n in LOSSES)


def test_labels_needed_when_alpha_below_one_and_shapes_must_match():
    zs, zt, y = batch()
    with pytest.raises(ConfigError) as e:
        kd_loss("hinton", zs, zt.softmax(-1), None, 4.0, 0.9)
    assert e.value.field == "distill.alpha"
    with pytest.raises(ConfigError) as e:
        kd_loss("hinton", zs[:, :5], zt.softmax(-1), y, 4.0, 0.9)
    assert e.value.field == "student.model"
