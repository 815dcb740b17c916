"""The distillation training task: the student learns from cached ensemble probabilities."""

from __future__ import annotations

from torch import Tensor, nn

from core.distill.losses import kd_loss


class DistillationTask:
    """alpha * KD(target_T || student_T) + (1 - alpha) * CE, with the target looked up by example index.

    `target` is the ensemble's (N_train, K) probabilities on the train split, on the training device;
    `weights` (N_train,) optionally re-weights examples (residual re-weighting rounds).
    """

    def __init__(self, target: Tensor, temperature: float, alpha: float, loss: str = "hinton",
                 weights: Tensor | None = None) -> None:
        self.target = target
        self.temperature = temperature
        self.alpha = alpha
        self.loss = loss
        self.weights = weights

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        weights = self.weights[idx] if self.weights is not None else None
        out = kd_loss(self.loss, logits.float(), self.target[idx], y, self.temperature, self.alpha,
                      weights=weights)
        out["logits"] = logits
        return out
