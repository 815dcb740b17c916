"""Squared (Brier) loss under the probability-average combiner: bias, variance and diversity.

With q_id = softmax(z_id), the ensemble of draw d is p̄_d = mean_i q_id (soft voting), the centroid
of the squared loss, and with e_y the one-hot label and ||.||² summed over classes (the Brier score
of core.evaluate, in [0, 2]):

    E_d ||p̄_d - e_y||² = mean_i ||E_d q_id - e_y||²          bias
                       + mean_i E_d ||q_id - E_d q_id||²      variance
                       - E_d mean_i ||q_id - p̄_d||²           diversity
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from core.diagnostics.inputs import as_draws, as_labels
from core.diagnostics.terms import Decomposition, draws_reason


def _norm2(p: Tensor) -> Tensor:
    return (p * p).sum(dim=-1)


def brier_from_probs(q: Tensor, y: Tensor) -> Decomposition:
    """brier_terms from checked float64 (M, D, N, K) probabilities and int64 labels."""
    m, d, _, k = q.shape
    onehot = F.one_hot(y, k).to(q.dtype)
    # mean_j ||q_j - c||² = mean_j ||q_j||² - ||c||² for c = mean_j q_j: one pass over the members
    # for every spread term instead of one per centre.
    sq = _norm2(q)  # (M, D, N)
    ens = q.mean(dim=0)  # (D, N, K)
    loss = _norm2(ens - onehot)  # (D, N)
    member_loss = (sq - 2 * q.gather(-1, y.expand(m, d, -1).unsqueeze(-1)).squeeze(-1) + 1).mean(0)  # (D, N)
    diversity = sq.mean(dim=0) - _norm2(ens)  # (D, N)
    per_example = {"loss": loss.mean(0), "member_loss": member_loss.mean(0), "diversity": diversity.mean(0)}
    if d >= 2:
        central = q.mean(dim=1)  # (M, N, K): E_d q_id
        per_example["bias"] = _norm2(central - onehot).mean(0)
        per_example["variance"] = (sq.mean(dim=1) - _norm2(central)).mean(0)
    per_draw = {"loss": loss.mean(1), "member_loss": member_loss.mean(1), "diversity": diversity.mean(1)}
    return Decomposition("mean_prob", "brier", m, d, per_example, per_draw, draws_reason(d))


def brier_terms(member_logits: Tensor, y: Tensor) -> Decomposition:
    """Bias, variance, diversity of the Brier score for (M, D, N, K) logits under the probability average."""
    z, _ = as_draws(member_logits)
    y = as_labels(y, z.shape[2], z.shape[3])
    return brier_from_probs(z.softmax(dim=-1), y)
