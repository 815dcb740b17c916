"""Distillation training tasks: the student learns from the ensemble's probabilities.

Three ways to teach, all with the same loss:
  cached  the ensemble's probabilities on the plain (un-augmented) train images, looked up by row;
          the student sees an augmented image but learns the target of the plain one
  views   the ensemble's probabilities on every view of a `ViewGrid`, looked up by (view, row); the
          student sees exactly the view its target was computed on
  live    the teachers run on the student's own augmented batch, every step

With `queried` (distill.teacher_budget, core.distill.budget) only the queried train rows get a
target: cached targets are looked up for those rows only, live teachers run on those rows only, and
the others learn from their hard label (see core.distill.losses.masked_kd).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from core.device import precision_for
from core.distill.budget import PASSES_KEY
from core.distill.losses import kd_loss


class _KDTask:
    """alpha * KD(target_T || student_T) + (1 - alpha) * CE; subclasses say where the target comes from."""

    views = None  # a ViewGrid when the loop should show named views (see core.train.tasks.Task)

    def __init__(self, temperature: float, alpha: float, loss: str = "hinton",
                 weights: Tensor | None = None, queried: Tensor | None = None) -> None:
        self.temperature = temperature
        self.alpha = alpha
        self.loss = loss
        self.weights = weights  # (N_train,) per-example weights (residual re-weighting rounds)
        self.queried = queried  # (N_train,) bool: rows with a teacher target; None = every row

    def target_for(self, x: Tensor, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        """Ensemble probabilities for the batch: (B, K), or (mask.sum(), K) for the `mask` rows only."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, Tensor]:
        # With views, idx numbers (view, row) pairs: the weight and the queried flag belong to the row.
        mask = self.queried[idx % self.queried.shape[0]] if self.queried is not None else None
        target = self.target_for(x, idx, mask)
        logits = model(x)
        weights = self.weights[idx % self.weights.shape[0]] if self.weights is not None else None
        budgeted = {} if mask is None else {"mask": mask}  # the unbudgeted call stays exactly as it was
        out = kd_loss(self.loss, logits.float(), target, y, self.temperature, self.alpha, weights=weights,
                      **budgeted)
        out["logits"] = logits
        return out


class DistillationTask(_KDTask):
    """The target looked up by example index in cached ensemble probabilities.

    `target` is (N_train, K) ensemble probabilities on the plain train split, or (V * N_train, K) with
    `views` (row view * N_train + n holds example n in view v), on the training device.
    """

    def __init__(self, target: Tensor, temperature: float, alpha: float, loss: str = "hinton",
                 weights: Tensor | None = None, views=None, queried: Tensor | None = None) -> None:
        super().__init__(temperature, alpha, loss, weights, queried)
        self.target = target
        self.views = views

    def target_for(self, x: Tensor, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.target[idx] if mask is None else self.target[idx[mask]]


class LiveDistillationTask(_KDTask):
    """The target computed by running every teacher on the student's batch.

    `combine` maps member logits (M, B, K) to ensemble probabilities (B, K): the fitted rule of the
    ensemble scheme (`Combined.predict`). Teachers run in eval mode without gradients.

    `passes` counts teacher forwards (images x teachers) as they run; `epoch_metrics` hands the loop
    each epoch's count for the history (PASSES_KEY), so a resumed student keeps its earlier epochs'.
    """

    def __init__(self, teachers: Sequence[nn.Module], combine: Callable[[Tensor], Tensor], temperature: float,
                 alpha: float, loss: str = "hinton", weights: Tensor | None = None,
                 queried: Tensor | None = None) -> None:
        super().__init__(temperature, alpha, loss, weights, queried)
        self.teachers = list(teachers)
        self.combine = combine
        self.passes = 0  # teacher forwards since the last epoch_metrics()

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        """Ensemble probabilities (B, K) of the teachers on images x."""
        precision = precision_for(x.device)
        outs = []
        for teacher in self.teachers:
            teacher.eval()
            with precision.autocast(x.device):
                outs.append(teacher(x).float())
        self.passes += x.shape[0] * len(self.teachers)
        return self.combine(torch.stack(outs))

    def target_for(self, x: Tensor, idx: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            return self.target(x)
        xq = x[mask]
        # No queried row in the batch: no teacher runs; kd_loss gives the batch a KD term of 0.
        return self.target(xq) if xq.shape[0] else xq.new_empty((0, 0))

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's teacher forwards, for the loop's history row; resets the count."""
        passes, self.passes = self.passes, 0
        return {PASSES_KEY: passes}
