"""Member-by-member error correlation and disagreement, averaged over draws.

Draw d of member i is paired with draw d of member j: each pair is one realisation of two
independently trained members, and the mean over the D pairs is less noisy than draw 0 alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.diagnostics.inputs import as_draws, as_labels


def error_correlation(member_logits: Tensor, y: Tensor) -> Tensor:
    """(M, M) Pearson correlation of the members' 0/1 error indicators, mean over draws.

    A member whose errors are constant in a draw (right on every example, or wrong on every one) has
    no defined correlation there: that draw is left out of the pair's mean, and a pair undefined in
    every draw is NaN (None in diagnose's JSON). The diagonal is 1 by definition.
    """
    z, _ = as_draws(member_logits)
    return error_correlation_from_predictions(z.argmax(dim=-1), as_labels(y, z.shape[2], z.shape[3]))


def error_correlation_from_predictions(pred: Tensor, y: Tensor) -> Tensor:
    """error_correlation from (M, D, N) argmax predictions and int64 labels."""
    n = pred.shape[2]
    err = (pred != y).to(torch.float64)  # (M, D, N)
    centred = err - err.mean(dim=-1, keepdim=True)
    cov = torch.einsum("idn,jdn->dij", centred, centred) / n  # (D, M, M)
    std = cov.diagonal(dim1=1, dim2=2).sqrt()  # (D, M)
    denom = std.unsqueeze(2) * std.unsqueeze(1)
    corr = torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.full_like(cov, float("nan")))
    out = corr.nanmean(dim=0)
    out.fill_diagonal_(1.0)
    return out


def disagreement(member_logits: Tensor) -> Tensor:
    """(M, M) fraction of examples where two members' argmax predictions differ, mean over draws."""
    z, _ = as_draws(member_logits)
    return disagreement_from_predictions(z.argmax(dim=-1))


def disagreement_from_predictions(pred: Tensor) -> Tensor:
    """disagreement from (M, D, N) argmax predictions."""
    # One row at a time: (M, D, N) per row rather than an (M, M, D, N) intermediate
    return torch.stack([(pred[i] != pred).to(torch.float64).mean(dim=(1, 2)) for i in range(pred.shape[0])])
