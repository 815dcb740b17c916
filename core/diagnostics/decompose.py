"""The three decompositions of one set of logits, sharing one log-softmax and one argmax."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from core.diagnostics.brier import brier_from_probs
from core.diagnostics.crossentropy import cross_entropy_from_log_probs
from core.diagnostics.inputs import as_draws, as_labels, log_probs
from core.diagnostics.terms import Decomposition
from core.diagnostics.zero_one import zero_one_from_predictions


def decompose_checked(log_q: Tensor, pred: Tensor, y: Tensor) -> dict[str, Decomposition]:
    """The decompositions from float64 (M, D, N, K) log-probs, (M, D, N) argmax predictions and labels."""
    return {"mean_logit": cross_entropy_from_log_probs(log_q, y),
            "mean_prob": brier_from_probs(log_q.exp(), y),
            "vote": zero_one_from_predictions(pred, y, log_q.shape[-1])}


def decompose(member_logits: Tensor | Sequence[Sequence[Tensor]], y: Tensor) -> dict[str, Decomposition]:
    """{mean_logit: cross-entropy, mean_prob: Brier, vote: 0/1} decompositions with per-example terms."""
    z, _ = as_draws(member_logits)
    y = as_labels(y, z.shape[2], z.shape[3])
    return decompose_checked(log_probs(z), z.argmax(dim=-1), y)
