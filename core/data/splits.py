"""Seeded, stratified index splits. All randomness comes from a private torch.Generator."""

from __future__ import annotations

import torch


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def stratified_subset(y: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """Sorted indices of at most `limit` examples, each class keeping its share of the pool."""
    n = y.numel()
    if limit >= n:
        return torch.arange(n)
    g = _generator(seed)
    # Give each example a key (its random rank within its class + jitter) / class size; taking the
    # smallest keys interleaves classes in proportion to their sizes.
    key = torch.empty(n, dtype=torch.float64)
    jitter = torch.rand(n, generator=g, dtype=torch.float64)
    for cls in torch.unique(y).tolist():
        members = (y == cls).nonzero().flatten()
        ranks = torch.randperm(members.numel(), generator=g).to(torch.float64)
        key[members] = (ranks + jitter[members]) / members.numel()
    return torch.sort(torch.argsort(key)[:limit]).values


def stratified_split(y: torch.Tensor, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Split indices 0..N-1 into len(fractions)+1 disjoint, sorted parts covering all of them.

    Part i (i < len(fractions)) takes round(fraction_i * r_c) examples of every class c, where r_c
    is what the earlier parts left of that class (so val_fraction is a share of the training pool
    once test is out); the last part (train) takes the rest, so rounding never drops an example.
    """
    g = _generator(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for cls in torch.unique(y).tolist():
        members = (y == cls).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        start = 0
        for i, frac in enumerate(fractions):
            take = int(round(frac * (members.numel() - start)))
            parts[i].append(members[start:start + take])
            start += take
        parts[-1].append(members[start:])
    return [torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.long) for p in parts]
