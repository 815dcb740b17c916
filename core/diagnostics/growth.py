"""Ensemble terms as members are added one at a time, best member (lowest val NLL) first."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from core.diagnostics.crossentropy import combine_parts, member_parts, true_class
from core.diagnostics.inputs import as_draws, as_labels, log_probs
from core.errors import ConfigError


def member_nll(member_logits: Tensor, y: Tensor) -> Tensor:
    """(M,) each member's NLL in nats, mean over its draws and the examples."""
    z, _ = as_draws(member_logits)
    y = as_labels(y, z.shape[2], z.shape[3])
    return -true_class(log_probs(z), y).mean(dim=(1, 2))


def order_by_val_nll(val_logits: Tensor, val_y: Tensor) -> list[int]:
    """Member indices sorted by val NLL, lowest first (ties keep the given order)."""
    return order_from_nll(member_nll(val_logits, val_y))


def order_from_nll(nll: Tensor) -> list[int]:
    """Member indices sorted by (M,) NLL, lowest first (ties keep the given order)."""
    return [int(i) for i in torch.sort(nll, stable=True).indices]


def check_order(order: Sequence[int], members: int) -> list[int]:
    """`order` as a list, or a ConfigError unless it is a permutation of range(members)."""
    order = [int(i) for i in order]
    if sorted(order) != list(range(members)):
        raise ConfigError("diagnostics.order", f"{order} is not an order of the {members} members",
                          f"list every member index 0..{members - 1} once")
    return order


def growth_from_log_probs(log_q: Tensor, y: Tensor, order: Sequence[int]) -> list[dict]:
    """diversity_growth from checked float64 (M, D, N, K) log-probabilities and int64 labels."""
    order = check_order(order, log_q.shape[0])
    # Per-member terms once; the ensemble of the first m members needs only a running sum of log q.
    parts = member_parts(log_q, y)
    running = torch.zeros_like(log_q[0])
    rows = []
    for count, member in enumerate(order, start=1):
        running += log_q[member]
        chosen = order[:count]
        terms = combine_parts({name: t[chosen] for name, t in parts.items()}, running / count, y).means()
        rows.append({"members": count, "added": member, **terms})
    return rows


def diversity_growth(member_logits: Tensor, y: Tensor, order: Sequence[int]) -> list[dict]:
    """Cross-entropy terms (test means) of the first m members of `order`, for m = 1..M.

    Each row: members (m), added (index of the member added at this step), loss, member_loss,
    diversity, and bias, variance, ensemble_bias, ensemble_variance (None with one draw per member).
    """
    z, _ = as_draws(member_logits)
    y = as_labels(y, z.shape[2], z.shape[3])
    return growth_from_log_probs(log_probs(z), y, order)
