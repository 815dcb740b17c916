"""Student stage: a scratch student (hard labels) and a distilled student per seed, same budget.

Both students of a seed start from the same initial weights and see the same batches, so the
difference between them is the distillation target alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.config import RunConfig
from core.device import precision_for
from core.data.views import ViewGrid
from core.distill.budget import BUDGET_SEED_OFFSET, TeacherBudget, live_passes, residuals
from core.distill.task import DistillationTask, LiveDistillationTask
from core.evaluate import logits_metrics
from core.models import ModelSpec, build_model
from core.results import StudentEntry, TeachingInfo, ViewsInfo
from core.train import CancelToken, ClassificationTask, EventBus, fit, predict_logits
from core.train.checkpoint import save_weights

STUDENT_SEED_OFFSET = 500_000  # keeps student seeds apart from teacher seeds (seed + 1000 * member)


def student_spec(cfg: RunConfig) -> ModelSpec:
    """The student's model spec from the config."""
    return ModelSpec(cfg.student.model, width=cfg.student.width, depth=cfg.student.depth)


@dataclass
class StudentRun:
    """One trained student: its results entry and the model (for cost measurement)."""

    entry: StudentEntry
    model: nn.Module
    test_logits: torch.Tensor


@dataclass
class Teaching:
    """Where distilled students get their targets from (modes in core.distill.task).

    `target` is the ensemble's train probabilities, (N, K) plain or (V * N, K) per view; live
    teaching runs `teachers` on each batch and combines them with `predict`. With a view grid the
    scratch student is shown the same named views, so both students see one augmentation distribution.
    """

    mode: str
    target: torch.Tensor | None = None
    views: ViewGrid | None = None
    teachers: list[nn.Module] = field(default_factory=list)
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None
    seconds: float = 0.0  # spent preparing the targets (view logits), beyond the plain cache
    members: int = 0      # teacher draws the target combines (cached teaching's pass count)

    def task(self, cfg: RunConfig, kind: str, weights: torch.Tensor | None = None,
             queried: torch.Tensor | None = None):
        """The training task of a 'scratch' or 'kd' student; `queried` (N_train,) bool: rows with a target."""
        if kind == "scratch":
            return ClassificationTask(cfg.train.label_smoothing, views=self.views)
        d = cfg.distill
        if self.mode == "live":
            return LiveDistillationTask(self.teachers, self.predict, d.temperature, d.alpha, d.loss, weights,
                                        queried=queried)
        return DistillationTask(self.target, d.temperature, d.alpha, d.loss, weights, views=self.views,
                                queried=queried)

    def passes_per_example(self) -> int | None:
        """Teacher passes one queried train example costs with cached targets: views x teacher draws.

        None for live teaching, whose passes are counted as the teachers run (core.distill.budget).
        """
        if self.mode == "live":
            return None
        return (self.views.num_views if self.views is not None else 1) * self.members

    def budget(self, cfg: RunConfig, labels: torch.Tensor) -> TeacherBudget:
        """Round 1 of distill.teacher_budget for one student lineage: the stratified draw, seeded from
        the run seed, so every student seed starts from the same queried examples."""
        return TeacherBudget.first_round(labels, cfg.distill.teacher_budget, cfg.seed + BUDGET_SEED_OFFSET,
                                         self.passes_per_example())

    def describe(self) -> TeachingInfo:
        """The results entry: mode, preparation seconds, view grid or live teacher count."""
        return TeachingInfo(mode=self.mode, seconds=self.seconds,
                            views=None if self.views is None else ViewsInfo(**self.views.describe()),
                            teachers=len(self.teachers) if self.mode == "live" else None)


def train_student(cfg: RunConfig, data, kind: str, seed_index: int, out: Path, events: EventBus,
                  cancel: CancelToken, teaching: Teaching, weights: torch.Tensor | None = None,
                  round_index: int = 1, fingerprint: str = "", budget: TeacherBudget | None = None) -> StudentRun:
    """Train one student: kind 'scratch' (hard labels) or 'kd' (distilled as `teaching` says).

    budget: the examples with a teacher target this round; a 'kd' student without one gets round 1's
    (a sweep's trials train one round). Its entry records them and the teacher passes they cost.
    """
    if kind == "kd" and budget is None:
        budget = teaching.budget(cfg, data.train.y.to(data.device))
    seed = cfg.seed + STUDENT_SEED_OFFSET + seed_index
    label = kind if kind == "scratch" else f"kd-r{round_index}"
    source = f"student/{label}/s{seed_index}"
    folder = Path(out) / "students" / f"{label}_s{seed_index}"
    torch.manual_seed(seed)
    model = build_model(student_spec(cfg), data.num_classes, data.in_chans, image_size=data.image_size,
                        field="student.model")
    queried = None if budget is None or budget.mask is None else budget.mask.to(data.device)
    result = fit(model, teaching.task(cfg, kind, weights, queried), data, cfg.student.train_config(cfg.train),
                 source=source, seed=seed,
                 events=events, cancel=cancel, ckpt_dir=folder, fingerprint=f"{fingerprint}|{label}|{seed}")
    save_weights(model, folder / "model.safetensors")
    logits, y = predict_logits(model, data.batches("test", 1024, shuffle=False, augment=False),
                               data.device, precision_for(data.device))
    test = logits_metrics(logits, y)
    passes = None
    if budget is not None:
        passes = live_passes(result.history) if teaching.mode == "live" else budget.round_passes()
    entry = StudentEntry(kind=kind, round=round_index if kind == "kd" else None, seed=seed_index,
                         teacher_examples=None if budget is None else budget.examples, teacher_passes=passes,
                         test_acc=test["acc"], test_nll=test["nll"], test_ece=test["ece"],
                         val_acc=result.best_val.get("val/acc"), val_nll=result.best_val.get("val/loss"),
                         train_seconds=result.seconds, best_epoch=result.best_epoch, history=result.history,
                         weights=str((folder / "model.safetensors").relative_to(out)))
    return StudentRun(entry, model, logits)


def residual_weights(target: torch.Tensor, student_logits: torch.Tensor, floor: float = 0.1) -> torch.Tensor:
    """Per-example weights from the student's residual KL(target || student), mean 1.

    A floor (share of the mean) keeps every example in play: an example the student already fits
    still counts `floor` as much as an average one, so the next round does not forget it.
    """
    kl = residuals(target, student_logits)
    w = kl / kl.mean().clamp_min(1e-12)
    w = floor + (1 - floor) * w
    return w / w.mean()
