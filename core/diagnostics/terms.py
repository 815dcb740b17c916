"""The result of one decomposition: per-example terms, per-draw test means, and their summaries."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# Terms every decomposition reports, in display order. The identity is
#   loss = bias + variance - diversity,   member_loss = bias + variance,
# where loss and member_loss are expectations over draws. For the 0/1 loss the three are effects.
TERMS = ("loss", "member_loss", "bias", "variance", "diversity")

# How to get bias and variance when a run has one draw, for the `reason` string
TEACHER_FIX = "set every teachers.*.seeds >= 2 to get them"
STUDENT_FIX = "set student.seeds >= 2 to get them"


def draws_reason(draws: int, unit: str = "member", fix: str = TEACHER_FIX) -> str | None:
    """Why bias and variance are missing (None when they are not): they need >= 2 draws per `unit`."""
    if draws >= 2:
        return None
    return (f"bias and variance need >= 2 draws (training seeds) per {unit}; this run has 1 seed per "
            f"{unit}, so only the single-run form loss = member_loss - diversity is given; {fix}")


@dataclass
class Decomposition:
    """Terms of one loss under its combiner, for M members and D draws (effects for the 0/1 loss)."""

    combiner: str  # ensemble scheme the loss decomposes under: mean_logit, mean_prob, vote
    loss_name: str  # cross_entropy, brier, zero_one
    members: int
    draws: int
    per_example: dict[str, Tensor]  # term -> (N,) float64, expected over draws; no bias/variance at D = 1
    per_draw: dict[str, Tensor]  # loss, member_loss, diversity -> (D,) test means of the single-run form
    reason: str | None = None  # why bias and variance are absent
    extra_identities: tuple[str, ...] = field(default_factory=tuple)

    def names(self) -> list[str]:
        """Term names in display order: the standard ones, then any extras (present or not)."""
        return list(TERMS) + [t for t in self.per_example if t not in TERMS]

    def means(self) -> dict[str, float | None]:
        """Test-set mean of every term; None for a term this run cannot estimate."""
        return {t: float(self.per_example[t].mean()) if t in self.per_example else None for t in self.names()}

    def per_class(self, y: Tensor, num_classes: int) -> dict[str, list[float | None] | None]:
        """Mean of every term over the test examples of each true class (None for an empty class)."""
        y = y.to("cpu", torch.int64)
        count = torch.bincount(y, minlength=num_classes).to(torch.float64)
        out: dict[str, list[float | None] | None] = {}
        for t in self.names():
            if t not in self.per_example:
                out[t] = None
                continue
            total = torch.zeros(num_classes, dtype=torch.float64).index_add_(0, y, self.per_example[t])
            out[t] = [float(s / c) if c else None for s, c in zip(total, count)]
        return out

    def to_dict(self, y: Tensor, num_classes: int) -> dict:
        """JSON-ready summary: test means, per-class means, per-draw means (no per-example arrays)."""
        return {"loss_name": self.loss_name, "members": self.members, "draws": self.draws,
                "identity": "loss = bias + variance - diversity = member_loss - diversity",
                "extra_identities": list(self.extra_identities),
                "terms": self.means(), "per_class": self.per_class(y, num_classes),
                "per_draw": {t: [float(v) for v in vals] for t, vals in self.per_draw.items()},
                "reason": self.reason}
