"""Distillation training tasks: the student learns from the ensemble's probabilities.

Three ways to teach, all with the same loss:
  cached  the ensemble's probabilities on the plain (un-augmented) train images, looked up by row;
          the student sees an augmented image but learns the target of the plain one
  views   the ensemble's probabilities on every view of a `ViewGrid`, looked up by (view, row); the
          student sees exactly the view its target was computed on
  live    the teachers run on the student's own augmented batch, every step
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from core.device import precision_for
from core.distill.losses import kd_loss


class _KDTask:
    """alpha * KD(target_T || student_T) + (1 - alpha) * CE; subclasses say where the target comes from."""

    views = None  # a ViewGrid when the loop should show named views (see core.train.tasks.Task)

    def __init__(self, temperature: float, alpha: float, loss: str = "hinton",
                 weights: Tensor | None = None) -> None:
        self.temperature = temperature
        self.alpha = alpha
        self.loss = loss
        self.weights = weights  # (N_train,) per-example weights (residual re-weighting rounds)

    def target_for(self, x: Tensor, idx: Tensor) -> Tensor:
        """Ensemble probabilities (B, K) for the batch."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, Tensor]:
        target = self.target_for(x, idx)
        logits = model(x)
        # With views, idx numbers (view, row) pairs: the weight belongs to the row.
        weights = self.weights[idx % self.weights.shape[0]] if self.weights is not None else None
        out = kd_loss(self.loss, logits.float(), target, y, self.temperature, self.alpha, weights=weights)
        out["logits"] = logits
        return out


class DistillationTask(_KDTask):
    """The target looked up by example index in cached ensemble probabilities.

    `target` is (N_train, K) ensemble probabilities on the plain train split, or (V * N_train, K) with
    `views` (row view * N_train + n holds example n in view v), on the training device.
    """

    def __init__(self, target: Tensor, temperature: float, alpha: float, loss: str = "hinton",
                 weights: Tensor | None = None, views=None) -> None:
        super().__init__(temperature, alpha, loss, weights)
        self.target = target
        self.views = views

    def target_for(self, x: Tensor, idx: Tensor) -> Tensor:
        return self.target[idx]


class LiveDistillationTask(_KDTask):
    """The target computed by running every teacher on the student's batch.

    `combine` maps member logits (M, B, K) to ensemble probabilities (B, K): the fitted rule of the
    ensemble scheme (`Combined.predict`). Teachers run in eval mode without gradients.
    """

    def __init__(self, teachers: Sequence[nn.Module], combine: Callable[[Tensor], Tensor], temperature: float,
                 alpha: float, loss: str = "hinton", weights: Tensor | None = None) -> None:
        super().__init__(temperature, alpha, loss, weights)
        self.teachers = list(teachers)
        self.combine = combine

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        """Ensemble probabilities (B, K) of the teachers on images x."""
        precision = precision_for(x.device)
        outs = []
        for teacher in self.teachers:
            teacher.eval()
            with precision.autocast(x.device):
                outs.append(teacher(x).float())
        return self.combine(torch.stack(outs))

    def target_for(self, x: Tensor, idx: Tensor) -> Tensor:
        return self.target(x)
