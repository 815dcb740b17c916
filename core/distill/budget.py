"""A teacher budget across distillation rounds (`distill.teacher_budget`): which train examples get a
teacher target in each round, and how many teacher forward passes that costs.

With share b of the N train examples, every round spends k = round(b * N) (at least 1) new examples:

  round 1   a stratified random draw (by class, seeded from the run seed): each class gets
            floor(b * n_c) or ceil(b * n_c) of its n_c examples, k in all
  round r   the k not-yet-queried examples the round r-1 student fits worst, by the residual the
            re-weighting uses (KL(target || student), `residuals`); what was queried stays queried

An example without a teacher target is trained on its hard label only (the distillation term is
masked per example, see core.distill.losses.kd_loss). The residual of an example not yet queried is
taken against its one-hot label: its teacher target is exactly what the budget has not paid for, so
ranking by it would query the teachers on every example. With b = 1 every example is queried in
round 1, `TeacherBudget.mask` is None and training takes the unbudgeted code path unchanged.

What "teacher forward passes" counts (StudentEntry.teacher_passes; per round in core.stages.budget_report):
  cached, views  examples x views x teachers whose teacher outputs are used as targets, each counted
                 once, in the round that first queries it (1 view for cached, the grid's views for
                 views). The shared logit cache still holds every train example (it is computed once
                 per teacher draw, and feeds the ensemble fit, diagnostics and other runs and sweeps):
                 the count is what a budgeted student needs, not what this run's cache computed
                 (`logit_cache` hits and misses say that).
  live           teacher forwards actually run while the student trains: queried examples in each
                 training batch x teachers, every epoch (augmented batches are not kept), summed from
                 the per-epoch history, so a resumed student counts its restored epochs too.
Counts are per student seed: each seed is a lineage of its own (they share the round-1 draw; later
rounds follow each seed's own residuals), and a run's report sums them over its seeds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

BUDGET_SEED_OFFSET = 700_000  # keeps the round-1 draw's seed apart from teacher (+1000 i) and student seeds
PASSES_KEY = "train/teacher_passes"  # live teaching: the per-epoch history entry the loop records


def budget_size(n: int, share: float) -> int:
    """Examples a round spends: share * n to the nearest integer (halves up), at least 1, at most n."""
    return min(n, max(1, math.floor(share * n + 0.5)))


def stratified_draw(labels: Tensor, share: float, seed: int) -> Tensor:
    """(N,) bool mask of budget_size(N, share) examples drawn at random within each class.

    Each class gets floor(share * n_c) examples, and the rest of the budget goes one each to the classes
    with the largest remainders (ties: the lower class), so every class is within one example of its
    share. Drawn on the CPU with its own generator: the same seed gives the same rows on any device.
    """
    y = labels.long().cpu()
    n = int(y.numel())
    classes, counts = torch.unique(y, return_counts=True)
    exact = [share * int(c) for c in counts]
    quota = [math.floor(e) for e in exact]
    extra = budget_size(n, share) - sum(quota)  # >= 0: a sum of floors is at most the floor of the sum
    by_remainder = sorted(range(len(quota)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in by_remainder[:extra]:
        quota[i] += 1
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, dtype=torch.bool)
    for c, q in zip(classes.tolist(), quota):
        rows = (y == c).nonzero().squeeze(1)
        mask[rows[torch.randperm(rows.numel(), generator=generator)[:q]]] = True
    return mask.to(labels.device)


def residuals(target: Tensor, student_logits: Tensor) -> Tensor:
    """(N,) KL(target || softmax(student_logits)) per example, in nats, clamped at 0.

    The residual that residual re-weighting (core.students.residual_weights) and the budget's selection
    both use; a one-hot target gives the cross-entropy of the label.
    """
    log_q = torch.log_softmax(student_logits.float(), dim=1)
    p = target.float()
    return (p * (p.clamp_min(1e-12).log() - log_q)).sum(dim=1).clamp_min(0.0)


def worst_fitted(residual: Tensor, queried: Tensor, k: int) -> Tensor:
    """(N,) bool mask of the k examples outside `queried` with the largest residual (ties: lower row).

    Fewer than k when fewer are left; none when every example is queried.
    """
    candidates = (~queried).nonzero().squeeze(1)
    picked = torch.zeros_like(queried)
    k = min(k, int(candidates.numel()))
    if k > 0:
        order = torch.sort(residual[candidates], descending=True, stable=True).indices[:k]
        picked[candidates[order]] = True
    return picked


@dataclass
class TeacherBudget:
    """One distilled student lineage's queried examples, round by round.

    `per_example` is the teacher passes one newly queried example costs (views x teachers) for cached
    teaching, None for live teaching (counted as the teachers run; see the module docstring).
    """

    share: float
    labels: Tensor            # (N,) train labels, on the training device
    queried: Tensor           # (N,) bool: has a teacher target
    per_example: int | None
    new: int                  # examples first queried in the current round
    round: int = 1

    @classmethod
    def first_round(cls, labels: Tensor, share: float, seed: int, per_example: int | None) -> "TeacherBudget":
        """Round 1: the stratified draw (every example at share 1, drawing nothing)."""
        n = int(labels.numel())
        queried = (torch.ones(n, dtype=torch.bool, device=labels.device) if share >= 1.0
                   else stratified_draw(labels, share, seed))
        budget = cls(share, labels, queried, per_example, new=int(queried.sum()))
        log.debug("teacher budget %.3g: round 1 queries %d of %d train examples", share, budget.new, n)
        return budget

    @property
    def size(self) -> int:
        """Examples each round spends (budget_size)."""
        return budget_size(int(self.labels.numel()), self.share)

    @property
    def examples(self) -> int:
        """Examples with a teacher target in the current round (this and earlier rounds' queries)."""
        return int(self.queried.sum())

    @property
    def mask(self) -> Tensor | None:
        """The queried mask for the distillation task, or None once every example is queried (the
        unbudgeted code path, so a share of 1 trains exactly as without a budget)."""
        return None if bool(self.queried.all()) else self.queried

    def known_target(self, teacher_target: Tensor) -> Tensor:
        """(N, K) the teachers' target where queried, the one-hot label elsewhere."""
        if self.mask is None:
            return teacher_target
        onehot = F.one_hot(self.labels.long(), teacher_target.shape[1]).to(teacher_target.dtype)
        return torch.where(self.queried[:, None], teacher_target, onehot)

    def next_round(self, teacher_target: Tensor, student_logits: Tensor) -> int:
        """Spend the budget on the examples the last student fits worst; returns how many were added.

        teacher_target: (N, K) plain-image ensemble probabilities (only queried rows are read);
        student_logits: (N, K) the last round's student on the plain train images.
        """
        residual = residuals(self.known_target(teacher_target), student_logits)
        picked = worst_fitted(residual, self.queried, self.size)
        self.queried = self.queried | picked
        self.new = int(picked.sum())
        self.round += 1
        return self.new

    def round_passes(self) -> int | None:
        """Teacher passes the current round's new queries cost (cached teaching); None for live."""
        return None if self.per_example is None else self.new * self.per_example


def live_passes(history: Sequence[dict[str, float]]) -> int:
    """Teacher forwards a live-taught student ran, summed over its per-epoch history."""
    return int(sum(row.get(PASSES_KEY, 0) for row in history))
