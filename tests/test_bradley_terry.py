"""The bradley_terry combiner: its limiting cases to 1e-6, the fitted fixed point, val-only fitting, the top-k cut."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.ensemble import combine, combiner_doc, fits_on_val, list_combiners
from core.ensemble import bradley_terry as bt
from core.ensemble.bradley_terry import CONCENTRATION_GRID

CS = (0.0, 1.0, 31.6, 1e4)  # concentrations spanning the grid: uniform weights to near-certainty dominating


def ranked_logits(m: int, n: int, k: int, decay: float = 0.5, noise: float = 1.0, seed: int = 0):
    """(M, N, K) logits like trained teachers': log-probs fall ~`decay` nats per rank (a random class
    order per example, shared by the members), plus member noise. Also the top class per example."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(k, generator=g) for _ in range(n)])  # order[n, r] = class of rank r
    base = torch.empty(n, k).scatter_(1, order, -decay * torch.arange(k, dtype=torch.float32).expand(n, k))
    return base + noise * torch.randn(m, n, k, generator=g), order[:, 0]


def splits(m: int = 3, k: int = 5, seed: int = 0):
    """Member logits for train/val/test and the val labels (each split's true class is its top class)."""
    z, y = {}, {}
    for i, (split, n) in enumerate((("train", 30), ("val", 80), ("test", 60))):
        z[split], y[split] = ranked_logits(m, n, k, decay=1.0, noise=1.5, seed=seed + i)
    return z, y


def numpy_bt(p: np.ndarray, iters: int = 100_000, tol: float = 1e-13) -> np.ndarray:
    """Independent reference: unweighted pairwise BT fit of M teachers' probabilities p (M, K) on one
    example, by the plain MM loop on the mean preference P_ij = mean_m p_mi / (p_mi + p_mj)."""
    m, k = p.shape
    pref = np.mean([[[p[t, i] / (p[t, i] + p[t, j]) for j in range(k)] for i in range(k)] for t in range(m)], axis=0)
    s = np.full(k, 1.0 / k)
    for _ in range(iters):
        new = np.array([sum(pref[i, j] for j in range(k) if j != i) /
                        sum(1.0 / (s[i] + s[j]) for j in range(k) if j != i) for i in range(k)])
        new /= new.sum()
        if np.max(np.abs(np.log(new) - np.log(s))) < tol:
            return new
        s = new
    raise AssertionError("the reference MM loop did not converge")


def test_registered_as_a_val_fitted_scheme_with_its_formula():
    assert "bradley_terry" in list_combiners() and list_combiners()[:2] == ["mean_prob", "mean_logit"]
    assert fits_on_val("bradley_terry")
    doc = combiner_doc("bradley_terry")
    assert "P_ij" in doc and "log( s_i / (s_i + s_j) )" in doc and len(doc.splitlines()) >= 10


@pytest.mark.parametrize("k", [2, 10, 100])  # 100 > TOP_K: through the cut
def test_one_teacher_gives_back_its_own_distribution(k):
    z, _ = ranked_logits(1, 50, k, decay=0.4, noise=2.0)
    for c in CS:
        assert torch.allclose(bt.bradley_terry_probs(z, c), z[0].softmax(-1), atol=1e-6, rtol=0), (k, c)


def test_a_single_member_passes_through_the_registered_scheme():
    z, y = splits(m=1)
    out = combine("bradley_terry", z, y["val"])
    for split in z:
        assert torch.allclose(out.probs[split], z[split][0].softmax(-1), atol=1e-6, rtol=0)
        assert torch.equal(out.weights[split], torch.ones(z[split].shape[1], 1))


@pytest.mark.parametrize("k", [6, 100])
def test_agreeing_teachers_give_their_common_distribution(k):
    z, _ = ranked_logits(1, 40, k, decay=0.4, noise=2.0, seed=1)
    # Three copies; each member's logits shifted per row, which the softmax removes.
    members = z.expand(3, -1, -1) + torch.tensor([0.0, 5.0, -3.0]).view(3, 1, 1)
    for c in CS:
        p = bt.bradley_terry_probs(members, c)
        assert torch.allclose(p, z[0].softmax(-1), atol=1e-6, rtol=0), (k, c)


def test_uniform_weights_give_the_unweighted_pairwise_fit():
    z, _ = ranked_logits(3, 8, 6, decay=0.6, noise=1.5, seed=2)
    p, w, _ = bt.bradley_terry_fit(z, 0.0)  # c = 0: every Beta posterior is flat, equal variances
    assert torch.allclose(w, torch.full_like(w, 1 / 3), atol=1e-12)
    probs = z.double().softmax(-1).numpy()
    for n in range(z.shape[1]):
        np.testing.assert_allclose(p[n].numpy(), numpy_bt(probs[:, n]), atol=1e-6, rtol=0)


def test_equally_confident_teachers_get_equal_weights_at_any_concentration():
    # Two classes, mirror-image teachers: q_A = 1 - q_B, so the Beta variances are equal.
    z = torch.tensor([[[2.0, -1.0], [0.3, 0.0]], [[-1.0, 2.0], [0.0, 0.3]]])
    for c in CS:
        p, w, _ = bt.bradley_terry_fit(z, c)
        assert torch.allclose(w, torch.full_like(w, 0.5), atol=1e-12)
        assert torch.allclose(p, torch.full_like(p, 0.5), atol=1e-6)  # the unweighted fit: a tie


@pytest.mark.parametrize("k", [7, 100])
def test_relabelling_the_classes_permutes_the_output(k):
    z, _ = ranked_logits(3, 30, k, decay=0.3, noise=1.5, seed=3)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(4))
    for c in CS:
        p, w, _ = bt.bradley_terry_fit(z, c)
        p_perm, w_perm, _ = bt.bradley_terry_fit(z[..., perm], c)
        assert torch.allclose(p_perm, p[:, perm], atol=1e-6, rtol=0), (k, c)
        assert torch.allclose(w_perm, w, atol=1e-9)


@pytest.mark.parametrize("scale", [1.0, 8.0, 60.0])  # 60: near one-hot teachers, probabilities at the floor
def test_the_fit_solves_the_likelihood_equations(scale, caplog):
    z, _ = ranked_logits(3, 200, 12, decay=0.5 * scale, noise=scale, seed=5)
    lp = z.double().log_softmax(-1).clamp_min(bt.LOGP_FLOOR)
    for c in CS:
        consensus, _ = bt.pairwise_consensus(lp, c)
        assert torch.allclose(consensus + consensus.transpose(1, 2), 1 - torch.eye(12, dtype=torch.float64))
        with caplog.at_level(logging.WARNING, logger=bt.__name__):
            s, steps = bt.fit_strengths(consensus)
        assert not caplog.records and steps < bt.MAX_ITER
        assert torch.isfinite(s).all() and (s > 0).all()
        assert torch.allclose(s.sum(-1), torch.ones(200, dtype=torch.float64), atol=1e-12)
        # sum_{j != i} P_ij = sum_{j != i} s_i / (s_i + s_j): the zero gradient of the BT log-likelihood.
        # Classes below S_SCALE (1e-6) converge in absolute terms (|Δs| < 1e-13), not relative ones,
        # so their equations hold to ~TOL soft wins; the others to rounding level.
        expected = (s[:, :, None] / (s[:, :, None] + s[:, None, :])).sum(-1) - 0.5
        residual = (consensus.sum(-1) - expected).abs()
        assert residual.max() < bt.TOL and residual[s >= bt.S_SCALE].max() < 1e-10, (scale, c)


def test_hitting_the_step_cap_is_logged(caplog):
    z, _ = ranked_logits(3, 5, 8, seed=6)
    consensus, _ = bt.pairwise_consensus(z.double().log_softmax(-1), 10.0)
    with caplog.at_level(logging.WARNING, logger=bt.__name__):
        bt.fit_strengths(consensus, max_iter=1)
    assert any("had not converged after 1 Newton steps" in r.getMessage() for r in caplog.records)


def test_the_mm_step_rises_to_the_same_fixed_point():
    z, _ = ranked_logits(3, 20, 5, decay=0.5, noise=1.0, seed=7)
    consensus, _ = bt.pairwise_consensus(z.double().log_softmax(-1), 3.0)
    s, _ = bt.fit_strengths(consensus)
    x = torch.full((20, 5), -np.log(5), dtype=torch.float64)
    like = bt._log_likelihood(consensus, x)
    for _ in range(3000):
        x = bt._mm_step(consensus.sum(-1), x)
        new = bt._log_likelihood(consensus, x)
        assert (new >= like - 1e-12).all()  # MM never lowers the likelihood
        like = new
    assert torch.allclose(x.exp(), s, atol=1e-6)


def test_the_concentration_is_chosen_on_val_only():
    z, y = splits(seed=10)
    out = combine("bradley_terry", z, y["val"])
    info = out.info
    assert info["grid_concentration"] == list(CONCENTRATION_GRID)
    best = int(np.argmin(info["grid_val_nll"]))
    assert info["concentration"] == CONCENTRATION_GRID[best] and info["val_nll"] == min(info["grid_val_nll"])
    assert info["val_nll_uniform"] == info["grid_val_nll"][0] and info["top_k"] == 5
    assert info["val_nll"] == pytest.approx(float(F.nll_loss(out.probs["val"].double().log(), y["val"])), abs=1e-5)
    # Other test (and train) logits change nothing that was fitted: only val logits and labels are read.
    other = dict(z, test=torch.randn_like(z["test"]), train=torch.randn(3, 7, 5))
    again = combine("bradley_terry", other, y["val"])
    assert again.info["concentration"] == info["concentration"] and again.info["grid_val_nll"] == info["grid_val_nll"]
    assert torch.equal(again.probs["val"], out.probs["val"])
    # The val labels do matter.
    flipped = combine("bradley_terry", z, (y["val"] + 1) % 5)
    assert flipped.info["grid_val_nll"] != info["grid_val_nll"]


def test_outputs_are_distributions_and_the_rule_is_kept():
    z, y = splits(m=2, seed=20)
    z = {s: torch.stack([t[0] * 3.0, t[1] * 0.3]) for s, t in z.items()}  # member 0 sharp, member 1 flat
    out = combine("bradley_terry", z, y["val"])
    for split, t in z.items():
        p, w = out.probs[split], out.weights[split]
        assert p.dtype == w.dtype == torch.float32 and p.shape == t.shape[1:] and w.shape == (t.shape[1], 2)
        assert torch.allclose(p.sum(-1), torch.ones(len(p)), atol=1e-6) and (p > 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(len(w)), atol=1e-6)
    if out.info["concentration"] > 0:
        assert out.weights["test"][:, 0].mean() > 0.5  # sharp judgments have the smaller Beta variance
    with torch.inference_mode():  # as in live teaching, and as a caller may combine
        assert torch.allclose(out.predict(z["test"]), out.probs["test"], atol=1e-7)
        assert torch.equal(combine("bradley_terry", z, y["val"]).probs["test"], out.probs["test"])
    assert out.predict(torch.zeros(2, 0, 5)).shape == (0, 5)


def test_chunks_do_not_change_the_result(monkeypatch):
    z, _ = ranked_logits(3, 50, 10, seed=30)
    whole = bt.bradley_terry_fit(z, 5.0)
    monkeypatch.setattr(bt, "CHUNK_NUMBERS", 3 * 10 * 10 * 7)  # chunks of 7 examples
    chunked = bt.bradley_terry_fit(z, 5.0)
    assert torch.allclose(chunked[0], whole[0], atol=1e-12) and torch.allclose(chunked[1], whole[1], atol=1e-12)


@pytest.mark.parametrize("decay", [0.5, 0.3])  # log-probs falling 0.5 (0.3: flat teachers) nats per rank
def test_the_top_k_cut_changes_little(decay):
    k = 100
    z, _ = ranked_logits(3, 40, k, decay=decay, noise=1.0, seed=40)
    for c in (0.0, 10.0, 1e4):
        cut, w_cut, _ = bt.bradley_terry_fit(z, c)
        full, w_full, _ = bt.bradley_terry_fit(z, c, top_k=k)
        assert (cut - full).abs().max() < 1e-3, (decay, c, float((cut - full).abs().max()))
        assert torch.allclose(cut.sum(-1), torch.ones(40, dtype=torch.float64), atol=1e-12)


TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=1", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]", "student.model=test_byobnet",
        "student.width=null", "student.seeds=1"]


def test_a_run_learns_from_bradley_terry_with_live_teachers(tmp_path):
    from safetensors.torch import load_file
    from core import config
    from core.pipeline import prepare, run_experiment
    cfg = config.load(overrides=TINY + ["ensemble.scheme=bradley_terry", "distill.teaching=live"])
    results = run_experiment(prepare(cfg, tmp_path), tmp_path)
    assert results.status == "done" and results.target_scheme == "bradley_terry"
    entry = next(e for e in results.ensembles if e.scheme == "bradley_terry")
    assert entry.error is None and 0 <= entry.test_acc <= 1 and "concentration" in entry.info
    assert [s.kind for s in results.students] == ["scratch", "kd"]
    outputs = load_file(str(tmp_path / results.artifacts["test_outputs"]))
    assert outputs["weights/bradley_terry"].shape == (results.dataset.test, 2)
