"""Training tasks: a task turns a batch into a dict of named losses (timm's TrainingTask shape).

The loop sums nothing itself: it back-propagates `out["loss"]` and logs every other scalar entry, so
one loop trains teachers (hard labels) and students (distillation) alike.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Task(Protocol):
    """Maps (model, images, labels, example indices) to {"loss": ..., "logits": ..., other scalars}.

    `idx` are rows of the train split. A task with a `views` attribute (a `ViewGrid`, not None) gets
    un-augmented batches that the loop shows in views it names: `idx` is then view * N_train + row.
    A task with an `epoch_metrics()` method returning {name: number} (counts since its last call) has
    them added to each epoch's history row.
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, Tensor]: ...


class ClassificationTask:
    """Cross-entropy on hard labels, with optional label smoothing (and optionally named views)."""

    def __init__(self, label_smoothing: float = 0.0, views=None) -> None:
        self.label_smoothing = label_smoothing
        self.views = views

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> dict[str, Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits}


def accuracy_count(logits: Tensor, y: Tensor) -> Tensor:
    """Number of correct top-1 predictions, kept on the device (no host sync)."""
    return (logits.argmax(dim=1) == y).sum()


@torch.no_grad()
def predict_logits(model: nn.Module, batches, device: torch.device, precision) -> tuple[Tensor, Tensor]:
    """Logits (fp32) and labels over an iterator of (x, y, idx) batches, in index order."""
    was_training = model.training
    model.eval()
    outs, ys, idxs = [], [], []
    for x, y, idx in batches:
        if precision.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast(device):
            outs.append(model(x).float())
        ys.append(y)
        idxs.append(idx)
    model.train(was_training)
    logits, labels, order = torch.cat(outs), torch.cat(ys), torch.cat(idxs)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return logits[inverse], labels[inverse]
