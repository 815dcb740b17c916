"""Input checks and layouts for the diagnostics: member logits as one float64 CPU (M, D, N, K) tensor.

M members, D draws per member (independent training seeds or bootstrap resamples), N examples,
K classes. Every diagnostic works on float64 CPU copies: the decompositions are identities that
tests check to 1e-6, and fp32 sums over 10k examples drift further than that.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from core.errors import ConfigError, DataError


def group_member_major(logits: Sequence[Tensor], draws_per_member: Sequence[int]) -> list[list[Tensor]]:
    """Split a flat member-major list of per-draw (N, K) logits into one list of draws per member."""
    if sum(draws_per_member) != len(logits):
        raise ConfigError("teachers", f"{len(logits)} logit tensors for {sum(draws_per_member)} teacher "
                          f"draws ({list(draws_per_member)} per member)", "recompute the teacher logit cache")
    out, start = [], 0
    for count in draws_per_member:
        out.append(list(logits[start:start + count]))
        start += count
    return out


def as_draws(logits: Tensor | Sequence[Sequence[Tensor]],
             field: str = "teachers") -> tuple[Tensor, str | None]:
    """(M, D, N, K) float64 CPU logits, and a note when uneven draw counts were cut to the smallest.

    Bias and variance are expectations over draws of each member, so every member needs the same D:
    with uneven counts each member keeps its first min(D_i) draws and the note says so.
    """
    note = None
    if isinstance(logits, Tensor):
        z = logits.unsqueeze(1) if logits.dim() == 3 else logits
        if z.dim() != 4:
            raise ConfigError(field, f"logits have shape {tuple(logits.shape)}, not (members, draws, "
                              "examples, classes) or (members, examples, classes)",
                              "stack the logits member-major")
    else:
        members = [list(draws) for draws in logits]
        if not members or any(not draws for draws in members):
            raise ConfigError(field, "a member has no logits", "train at least one draw of every member")
        counts = [len(draws) for draws in members]
        d = min(counts)
        if max(counts) != d:
            note = (f"members have {counts} draws; each keeps its first {d} so that bias and variance "
                    "average over the same number of draws")
        shapes = {tuple(t.shape) for draws in members for t in draws[:d]}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ConfigError(field, f"per-draw logits have shapes {sorted(shapes)}, not one (examples, "
                              "classes) shape", "recompute the logit cache for this data split")
        z = torch.stack([torch.stack([t.detach().to("cpu", torch.float64) for t in draws[:d]])
                         for draws in members])
    if min(z.shape) == 0:
        raise ConfigError(field, f"logits have an empty dimension: shape {tuple(z.shape)}",
                          "train at least one member and evaluate at least one example")
    z = z.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(z).all()):
        raise ConfigError(field, "logits contain NaN or inf (training diverged)",
                          "retrain with a lower train.lr, or drop the diverged run")
    return z, note


def as_seeds(logits: Tensor | Sequence[Tensor], field: str = "student") -> Tensor:
    """(1, S, N, K) float64 CPU logits from an (S, N, K) tensor or a list of S per-seed (N, K) tensors."""
    z = logits if isinstance(logits, Tensor) else torch.stack([t.detach().cpu() for t in logits])
    if z.dim() != 3:
        raise ConfigError(field, f"student logits have shape {tuple(z.shape)}, not (seeds, examples, "
                          "classes)", "stack one (examples, classes) tensor per seed")
    return as_draws(z.unsqueeze(0), field)[0]


def as_labels(y: Tensor, n: int, k: int) -> Tensor:
    """Labels as int64 CPU (N,), checked against N examples and K classes."""
    if y.is_floating_point() or y.numel() != n:
        raise DataError("data", f"expected {n} integer labels, got {y.numel()} of {y.dtype}",
                        "pass the labels of the split the logits were computed on")
    y = y.detach().reshape(-1).to("cpu", torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= k:
        raise DataError("data", f"labels span {lo}..{hi} but the logits have {k} classes",
                        "pass the labels of the data set the models were trained on")
    return y


def log_probs(z: Tensor) -> Tensor:
    """log softmax over the last dim.

    z - logsumexp(z) rather than torch's log_softmax: with few classes (K = 10) the fused kernel was
    measured 3x slower on this CPU (28 vs 10 ms for 1.5M float64 logits), and diagnostics call it on
    every member and draw.
    """
    return z - z.logsumexp(dim=-1, keepdim=True)
