"""Combiners fitted on the val split: learned global weights and stacking."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ensemble.fitting import fitting_mode, lbfgs, nll, val_on_cpu
from core.ensemble.registry import Combined, register_combiner

# Log-probabilities below this (e^-30 ~ 1e-13) carry no extra information for stacking, and
# flooring them stops one overconfident member from dominating the standardised features.
LOGP_FLOOR = -30.0


def _weighted_log_mean(w: Tensor, z: Tensor) -> Tensor:
    """sum_i w_i log softmax(z_i): (M,) weights, (M, N, K) logits -> (N, K) ensemble logits."""
    return torch.einsum("m,mnk->nk", w.to(z), z.log_softmax(dim=-1))


@register_combiner("learned", fits_on_val=True)
def learned(logits: dict[str, Tensor], val_labels: Tensor | None) -> Combined:
    """Global member weights w = softmax(a), fitted on val; weighted logit average.

        p(x) = softmax( sum_i w_i * z_i(x) ),   w = softmax(a),   a in R^M
        a*   = argmin_a  (1/N_val) sum_n -log p_{y_n}(x_n)           (val split only)

    Fitted with LBFGS from a = 0 (uniform weights, i.e. mean_logit), in float64, deterministic.
    The weights sum to 1, so they rank members but cannot sharpen or soften the ensemble (no
    temperature is learned). Members' log-softmax stands in for z_i: identical after the softmax.
    """
    with fitting_mode():
        lp = val_on_cpu(logits["val"]).log_softmax(dim=-1)
        y = val_labels.detach().cpu().clone()
        m = lp.shape[0]
        a = torch.zeros(m, dtype=torch.float64, requires_grad=True)
        val_nll, iters = lbfgs([a], lambda: F.cross_entropy(torch.einsum("m,mnk->nk", a.softmax(0), lp), y))
    w64 = a.detach().softmax(dim=0)
    uniform = nll(lp.mean(dim=0), y)
    w = w64.float().to(logits["val"].device)
    result = Combined.from_rule(logits, lambda z: _weighted_log_mean(w64, z).softmax(dim=-1))
    return Combined(probs=result.probs, predict=result.predict, global_weights=w,
                    info={"val_nll": val_nll, "val_nll_uniform": uniform, "iterations": iters,
                          "weights": [float(v) for v in w64]})


def _stack_features(z: Tensor) -> Tensor:
    """(M, N, K) member logits -> (N, M*K) floored log-probabilities, member-major."""
    m, n, k = z.shape
    return z.log_softmax(dim=-1).clamp_min(LOGP_FLOOR).permute(1, 0, 2).reshape(n, m * k)


@register_combiner("stacking", fits_on_val=True)
def stacking(logits: dict[str, Tensor], val_labels: Tensor | None) -> Combined:
    """Multinomial logistic regression on the members' concatenated val log-probabilities.

        x(x)  = standardise( [log softmax z_1(x), ..., log softmax z_M(x)] )      in R^(M*K)
        p(x)  = softmax( W^T x(x) + b ),   W in R^(M*K x K), b in R^K
        W, b  = argmin (1/N_val) sum_n -log p_{y_n}(x_n) + ||W||^2 / (2 N_val)

    The L2 term is scikit-learn's LogisticRegression(C=1) scaled to a mean loss. Log-probabilities
    instead of raw logits remove each member's arbitrary per-row offset; they are floored at -30
    nats, and standardised with val statistics. Fitted with LBFGS from zero, float64, deterministic,
    on val only. A torch fit rather than scikit-learn so that a class missing from val still gets a
    column (a small, not zero, probability).
    """
    with fitting_mode():
        z_val = val_on_cpu(logits["val"])
        y = val_labels.detach().cpu().clone()
        m, n, k = z_val.shape
        x = _stack_features(z_val)
        mu, sd = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
        x = (x - mu) / sd
        l2 = 1.0 / (2.0 * n)
        w = torch.zeros(m * k, k, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        val_nll, iters = lbfgs([w, b], lambda: F.cross_entropy(x @ w + b, y) + l2 * w.square().sum())
    dev = logits["val"].device
    w32, b32, mu32, sd32 = (t.detach().float().to(dev) for t in (w, b, mu, sd))
    result = Combined.from_rule(logits, lambda z: (((_stack_features(z) - mu32) / sd32) @ w32 + b32
                                                   ).softmax(dim=-1))
    return Combined(probs=result.probs, predict=result.predict, info={"val_nll": nll(x @ w.detach() + b.detach(), y),
                                       "val_objective": val_nll, "iterations": iters, "l2": l2})
