"""Fixed-rule combiners that fit nothing: probability average, logit average, majority vote."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ensemble.registry import Combined, register_combiner

# Pseudo-votes that smooth vote fractions. Fewer than one, so smoothing can never overturn a
# difference of one real vote; more than zero, so the NLL of a wrong unanimous vote stays finite.
VOTE_PSEUDO_VOTES = 0.5


@register_combiner("mean_prob")
def mean_prob(logits: dict[str, Tensor], val_labels: Tensor | None = None) -> Combined:
    """Arithmetic mean of member probabilities (soft voting).

        p(x) = (1/M) * sum_i softmax(z_i(x))

    The centroid of the squared (Brier) loss; for cross-entropy it is not a centroid and its
    label-free diversity term does not exist (notes/bias-variance-diversity.md).
    """
    return Combined.from_rule(logits, lambda z: z.softmax(dim=-1).mean(dim=0))


@register_combiner("mean_logit")
def mean_logit(logits: dict[str, Tensor], val_labels: Tensor | None = None) -> Combined:
    """Softmax of the mean member logit = normalised geometric mean of member probabilities.

        p(x) = softmax((1/M) * sum_i z_i(x))  ∝  prod_i softmax(z_i(x))^(1/M)

    The exact centroid for cross-entropy, so l(y, p) = mean_i l(y, p_i) - mean_i KL(p || p_i)
    (notes/bias-variance-diversity.md). Log-softmax is averaged instead of raw logits: identical
    after the softmax, and immune to each member's arbitrary per-row logit offset.
    """
    return Combined.from_rule(logits, lambda z: z.log_softmax(dim=-1).mean(dim=0).softmax(dim=-1))


@register_combiner("vote")
def vote(logits: dict[str, Tensor], val_labels: Tensor | None = None) -> Combined:
    """Majority vote of member argmax labels, as smoothed vote fractions.

        c_k(x) = #{i : argmax z_i(x) = k}                                (votes for class k)
        s(x)   = (1/2) * (1/M) sum_i softmax(z_i(x)) + (1/2) * (1/K)     (smoothing distribution)
        p(x)   = (c(x) + lam * s(x)) / (M + lam),   lam = 0.5 pseudo-votes

    Vote fractions rather than a one-hot winner keep the margin of the vote visible. The smoothing
    keeps the NLL finite (s_k >= 1/(2K) > 0) and, because lam < 1, never overturns a real vote.
    Ties in c are broken by the mean member probability (the larger s wins), and argmax p is the
    winner; an exact tie in both goes to the lowest class index.
    """
    def predict(z: Tensor) -> Tensor:
        m, _, k = z.shape
        counts = F.one_hot(z.argmax(dim=-1), k).sum(dim=0).float()  # (N, K)
        smooth = 0.5 * z.softmax(dim=-1).mean(dim=0) + 0.5 / k
        return (counts + VOTE_PSEUDO_VOTES * smooth) / (m + VOTE_PSEUDO_VOTES)

    result = Combined.from_rule(logits, predict)
    result.info["pseudo_votes"] = VOTE_PSEUDO_VOTES
    return result
