"""Per-example teacher weights from the inverse variance of each teacher's Dirichlet posterior."""

from __future__ import annotations

import torch
from torch import Tensor

from core.ensemble.fitting import nll, val_on_cpu
from core.ensemble.registry import Combined, register_combiner

# Concentrations tried on val: c = 0 (exactly uniform weights, i.e. mean_logit) then 0.1 .. 1e4 at
# four points per decade. Past ~1e4 the weights no longer change (c cancels, see the docstring).
CONCENTRATION_GRID: tuple[float, ...] = (0.0,) + tuple(10.0 ** (e / 4) for e in range(-4, 17))


def dirichlet_total_variance(probs: Tensor, c: float) -> Tensor:
    """Total posterior variance sum_k Var[pi_k] of Dir(c * p + 1), over the last dim of `probs`."""
    alpha = c * probs + 1.0
    a0 = alpha.sum(dim=-1, keepdim=True)
    # A sum of non-negative terms: no cancellation even for a near one-hot p.
    return (alpha * (a0 - alpha)).sum(dim=-1) / (a0.squeeze(-1) ** 2 * (a0.squeeze(-1) + 1.0))


def uncertainty_weights(probs: Tensor, c: float) -> Tensor:
    """(M, N, K) member probabilities -> (N, M) weights proportional to 1 / posterior variance."""
    v = dirichlet_total_variance(probs, c)  # (M, N)
    # softmax(-log v) over members = (1/v) / sum(1/v), without overflow for tiny variances.
    return (-v.log()).softmax(dim=0).T


def _combine(z: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """(ensemble logits (N, K), weights (N, M)) for member logits (M, N, K) at concentration c."""
    lp = z.log_softmax(dim=-1)
    w = uncertainty_weights(lp.exp(), c)
    return torch.einsum("nm,mnk->nk", w, lp), w


@register_combiner("uncertainty", fits_on_val=True)
def uncertainty(logits: dict[str, Tensor], val_labels: Tensor | None) -> Combined:
    """Per-example inverse-variance weights from each teacher's Dirichlet posterior; logit average.

        alpha_in = c * p_in + 1                         Dirichlet posterior of teacher i on example n:
                                                        a flat prior plus c pseudo-counts spread as p_in
        alpha0   = sum_k alpha_ink = c + K
        v_in     = sum_k alpha_ink (alpha0 - alpha_ink) / (alpha0^2 (alpha0 + 1))   total variance
        w_in     = (1 / v_in) / sum_j (1 / v_jn)
        p(x_n)   = softmax( sum_i w_in * z_in )          weighted logit average

    One concentration c shared by all teachers, chosen on val from CONCENTRATION_GRID by minimal
    ensemble NLL (ties go to the smaller c). Sharing c keeps the defining property: teachers with
    the same probability vector up to a permutation of classes have the same variance, hence equal
    weights, so uniform averaging is the special case of equal confidence; c = 0 gives exactly
    mean_logit, so the fit is never worse than mean_logit on val. The +1 prior matters: with
    alpha = c * p alone, v_in = (1 - ||p_in||^2) / (c + 1) and c would cancel from the weights.
    Large c approaches w_in ∝ 1 / (1 - ||p_in||^2): sharp teachers count more. The weighted logit
    (not probability) average keeps the cross-entropy centroid of mean_logit.
    """
    z_val = val_on_cpu(logits["val"])
    y = val_labels.cpu()
    grid_nll = [nll(_combine(z_val, c)[0], y) for c in CONCENTRATION_GRID]
    best = min(range(len(grid_nll)), key=lambda j: (grid_nll[j], j))
    c = CONCENTRATION_GRID[best]
    probs, weights = {}, {}
    for split, z in logits.items():
        ens, w = _combine(z, c)
        probs[split], weights[split] = ens.softmax(dim=-1), w
    return Combined(probs=probs, weights=weights, predict=lambda z: _combine(z, c)[0].softmax(dim=-1),
                    info={"concentration": c, "val_nll": grid_nll[best], "val_nll_uniform": grid_nll[0],
                          "grid_concentration": list(CONCENTRATION_GRID), "grid_val_nll": grid_nll})
