"""0/1 loss under majority vote: bias-effect, variance-effect and diversity-effect (Wood et al. 2023).

With L the 0/1 loss, c_id = argmax z_id the prediction of member i in draw d, maj_d the majority
vote of the c_id over members and c_i° the most frequent c_id over draws:

    E_d L(y, maj_d) = mean_i L(y, c_i°)                                   bias-effect
                    + [mean_i E_d L(y, c_id) - mean_i L(y, c_i°)]         variance-effect
                    - [mean_i E_d L(y, c_id) - E_d L(y, maj_d)]           diversity-effect

Effects, not divergences: the variance- and diversity-effects can be negative (a vote can be worse
than its average member). Ties go to the lowest class index everywhere: in a member's argmax, in
the vote and in the mode over draws. The `vote` ensemble scheme breaks vote ties by the mean member
probability instead, so on tied examples (an even number of members) its accuracy can differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.diagnostics.inputs import as_draws, as_labels
from core.diagnostics.terms import Decomposition, draws_reason


def mode(labels: Tensor, num_classes: int, dim: int) -> Tensor:
    """Most frequent class along `dim`; a tie goes to the lowest class index."""
    idx = labels.movedim(dim, -1)
    counts = idx.new_zeros(*idx.shape[:-1], num_classes).scatter_add_(-1, idx, torch.ones_like(idx))
    # torch.argmax returns the first maximal index, i.e. the lowest tied class
    return counts.argmax(dim=-1)


def zero_one_from_predictions(pred: Tensor, y: Tensor, num_classes: int) -> Decomposition:
    """zero_one_terms from (M, D, N) int64 argmax predictions and int64 labels."""
    m, d, _ = pred.shape
    wrong = (pred != y).to(torch.float64)
    loss = (mode(pred, num_classes, dim=0) != y).to(torch.float64)  # (D, N)
    member_loss = wrong.mean(0)  # (D, N)
    diversity = member_loss - loss  # (D, N), the diversity-effect of each draw
    per_example = {"loss": loss.mean(0), "member_loss": member_loss.mean(0), "diversity": diversity.mean(0)}
    if d >= 2:
        bias = (mode(pred, num_classes, dim=1) != y).to(torch.float64).mean(0)  # (N,): c_i° over draws
        per_example["bias"] = bias
        per_example["variance"] = per_example["member_loss"] - bias
    per_draw = {"loss": loss.mean(1), "member_loss": member_loss.mean(1), "diversity": diversity.mean(1)}
    return Decomposition("vote", "zero_one", m, d, per_example, per_draw, draws_reason(d))


def zero_one_terms(member_logits: Tensor, y: Tensor) -> Decomposition:
    """Bias-, variance- and diversity-effect of the 0/1 loss for (M, D, N, K) logits under majority vote."""
    z, _ = as_draws(member_logits)
    y = as_labels(y, z.shape[2], z.shape[3])
    return zero_one_from_predictions(z.argmax(dim=-1), y, z.shape[3])
