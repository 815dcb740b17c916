"""The stages of one experiment, each building its typed results entries (core.results).

teachers -> logit cache -> ensembles -> teaching targets -> students -> test outputs -> diagnostics
-> comparison. `core.pipeline.run_experiment` runs them in order for a run; `core.sweep` reuses the
teacher, ensemble and teaching stages for many student trials.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from core.atomic import write_tensors
from core.bench import Cost, ensemble_cost, measure
from core.config import section_identity
from core.cache import SPLITS, CacheStats, file_hash, teacher_logits, teacher_view_logits
from core.data import ViewGrid
from core.device import precision_for
from core.diagnostics import diagnose, group_member_major
from core.distill.budget import budget_size
from core.ensemble import Combined, combine, list_combiners
from core.errors import KdlabError
from core.evaluate import gain_recovery_over_seeds, logits_metrics, probs_metrics
from core.models import build_model
from core.prepare import Member, Prepared, config_fingerprint
from core.report import row
from core.results import (BudgetReport, BudgetRound, ComparisonRow, ComparisonSummary, DiagnosticsHeader,
                          DroppedTeacher, EnsembleEntry, GainRecovery, StudentEntry, TeacherEntry)
from core.students import Teaching, residual_weights, train_student
from core.train import CancelToken, ClassificationTask, Event, EventBus, fit, predict_logits
from core.train.checkpoint import save_weights

GALLERY_SIZE = 16  # test images kept for the "where teachers disagree most" gallery


def _check_finite(logits: dict[str, torch.Tensor], label: str, seed: int) -> None:
    bad = [split for split, z in logits.items() if not torch.isfinite(z).all()]
    if bad:
        raise FloatingPointError(f"{label} (seed {seed}) gives non-finite logits on {', '.join(bad)}: "
                                 "a diverged teacher")


def train_teacher(prep: Prepared, member: Member, seed_index: int, out: Path, events: EventBus,
                  cancel: CancelToken) -> tuple[TeacherEntry, nn.Module]:
    """Train one teacher draw (or resume it) and evaluate it on test."""
    cfg = prep.cfg
    seed = cfg.seed + 1000 * member.index + seed_index
    source = f"teacher/{member.label}/s{seed_index}"
    folder = out / "teachers" / f"{member.label}_s{seed_index}"
    fingerprint = config_fingerprint(member.cfg.model_dump(), section_identity(cfg.data, "data"),
                                     cfg.train.model_dump(),
                                     seed, cfg.ensemble.draws)
    torch.manual_seed(seed)
    model = build_model(member.spec(), prep.data.num_classes, prep.data.in_chans,
                        image_size=prep.data.image_size, field=f"teachers.{member.index}.model")
    # A bagging draw trains on its own resample; its logits are still taken on the whole train split.
    train_data = prep.data.bootstrap(seed) if cfg.ensemble.draws == "bootstrap" else prep.data
    result = fit(model, ClassificationTask(cfg.train.label_smoothing), train_data, cfg.train,
                 source=source, seed=seed, events=events, cancel=cancel, ckpt_dir=folder,
                 fingerprint=fingerprint)
    weights = folder / "model.safetensors"
    save_weights(model, weights)
    logits, y = predict_logits(model, prep.data.batches("test", 1024, shuffle=False, augment=False),
                               prep.device, precision_for(prep.device))
    test = logits_metrics(logits, y)
    entry = TeacherEntry(
        name=member.label, model=member.cfg.model, seed=seed_index, params=member.card["params"],
        flops=member.card["flops"], test_acc=test["acc"], test_nll=test["nll"], test_ece=test["ece"],
        train_seconds=result.seconds, best_epoch=result.best_epoch, epochs_run=len(result.history),
        val_acc=result.best_val.get("val/acc"), val_nll=result.best_val.get("val/loss"),
        history=result.history, weights=str(weights.relative_to(out)), weights_hash=file_hash(weights))
    return entry, model


@dataclass
class TrainedTeachers:
    """The teacher stage's output: every draw that trained to finite logits, in config order."""

    entries: list[TeacherEntry] = field(default_factory=list)
    models: dict[str, nn.Module] = field(default_factory=dict)    # one model per label (cost)
    logits: list[dict[str, torch.Tensor]] = field(default_factory=list)  # split -> (N, K), per draw
    draws: list[tuple[nn.Module, str]] = field(default_factory=list)     # (model, weights hash)
    dropped: list[DroppedTeacher] = field(default_factory=list)          # diverged draws, with why

    def stack(self) -> dict[str, torch.Tensor]:
        """Split -> (M, N, K) logits of every kept draw."""
        return {split: torch.stack([z[split] for z in self.logits]) for split in SPLITS}


def chance_accuracy(y: torch.Tensor, num_classes: int) -> float:
    """Accuracy of always predicting the most frequent class of `y`: what a model that learned nothing gets."""
    return float(torch.bincount(y.long().cpu(), minlength=num_classes).max()) / max(int(y.numel()), 1)


def teacher_stage(prep: Prepared, out: Path, events: EventBus, cancel: CancelToken, stats: CacheStats,
                  warn: Callable[[str], None]) -> TrainedTeachers:
    """Train (or resume) every teacher draw and cache its logits; a diverged draw is left out with a warning."""
    trained = TrainedTeachers()
    for m in prep.members:
        for s in range(m.cfg.seeds):
            try:
                entry, model = train_teacher(prep, m, s, out, events, cancel)
                logits = teacher_logits(model, entry.weights_hash, prep.data, out / "cache", stats)
                _check_finite(logits, m.label, s)
            except FloatingPointError as err:  # a diverged draw is left out; the others go on
                trained.dropped.append(DroppedTeacher(name=m.label, seed=s, error=str(err)))
                warn(f"teachers.{m.index}: draw {s} of {m.label} left out of the ensemble: {err}")
                continue
            chance = chance_accuracy(prep.data.val.y, prep.data.num_classes)
            if entry.val_acc is not None and entry.val_acc <= chance + 1.0 / max(len(prep.data.val), 1):
                warn(f"teachers.{m.index}: draw {s} of {m.label} is at chance level on val (accuracy "
                     f"{entry.val_acc:.3f}, chance {chance:.3f}): it learned nothing; lower train.lr (now "
                     f"{prep.cfg.train.lr:g}) or train longer (train.epochs)")
            trained.entries.append(entry)
            trained.models.setdefault(m.label, model)
            trained.draws.append((model, entry.weights_hash))
            trained.logits.append(logits)
    return trained


def ensemble_stage(prep: Prepared, stack: dict[str, torch.Tensor], events: EventBus,
                   schemes: Iterable[str] | None = None) -> tuple[list[EnsembleEntry], dict[str, Combined]]:
    """Combine the teacher draws with every registered scheme (or only `schemes`) and evaluate each on test.

    A scheme that cannot be fitted (e.g. a val split too small) is reported with its error; the
    others go on.
    """
    entries, combined = [], {}
    val_y, test_y = prep.data.val.y, prep.data.test.y
    wanted = set(schemes) if schemes is not None else None
    for scheme in list_combiners():
        if wanted is not None and scheme not in wanted:
            continue
        try:
            result = combine(scheme, stack, val_y)
        except KdlabError as err:
            events.emit(Event("info", f"ensemble/{scheme}", message=f"skipped: {err}"))
            entries.append(EnsembleEntry(scheme=scheme, error=str(err)))
            continue
        combined[scheme] = result
        test = probs_metrics(result.probs["test"], test_y)
        entries.append(EnsembleEntry(
            scheme=scheme, test_acc=test["acc"], test_nll=test["nll"], test_ece=test["ece"],
            test_brier=test["brier"], members=stack["test"].shape[0],
            global_weights=None if result.global_weights is None else [float(w) for w in result.global_weights],
            mean_example_weights=None if result.weights is None else
            [float(w) for w in result.weights["test"].mean(dim=0)],
            info={k: v for k, v in result.info.items() if isinstance(v, (int, float, str, bool))}))
    return entries, combined


def teaching_stage(prep: Prepared, target: Combined, draws: list[tuple[nn.Module, str]], out: Path,
                   stats: CacheStats) -> Teaching:
    """The distilled students' targets, as `distill.teaching` asks; `draws` = (model, weights hash)."""
    d, data = prep.cfg.distill, prep.data
    started = time.perf_counter()
    if d.teaching == "cached":
        teaching = Teaching("cached", target=target.probs["train"])
    elif d.teaching == "live":
        teaching = Teaching("live", teachers=[model for model, _ in draws], predict=target.predict)
    else:
        grid = ViewGrid.for_data(data.image_size, data.flip, data.augment, d.view_stride)
        views = torch.stack([teacher_view_logits(model, h, data, grid, out / "cache", stats)
                             for model, h in draws])  # (M, V, N, K)
        with torch.no_grad():
            per_view = torch.stack([target.predict(views[:, v]) for v in range(grid.num_views)])
        teaching = Teaching("views", target=per_view.reshape(-1, per_view.shape[-1]), views=grid)
    teaching.seconds = time.perf_counter() - started
    teaching.members = len(draws)
    return teaching


@dataclass
class TrainedStudents:
    """The student stage's output: entries in training order, one model per kind, test logits per seed."""

    entries: list[StudentEntry] = field(default_factory=list)
    models: dict[str, nn.Module] = field(default_factory=dict)   # 'scratch', 'kd' (cost measurement)
    test_logits: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {"scratch": [], "kd": []})


def student_stage(prep: Prepared, teaching: Teaching, plain_target: torch.Tensor, out: Path, events: EventBus,
                  cancel: CancelToken) -> TrainedStudents:
    """Scratch and distilled students for every seed; `rounds` > 1 adds residual re-weighting rounds.

    With distill.teacher_budget < 1 each round's students learn from the teachers on the budget's
    examples only, and each later round queries as many more where the last student's residual is
    largest (core.distill.budget). The test logits kept per seed are the scratch and last-round
    distilled students' (for diagnostics).
    """
    cfg = prep.cfg
    # Fields added since (teacher_budget, train_fraction) at their default are left out, so runs from
    # before them resume their students.
    fingerprint = config_fingerprint(cfg.student.model_dump(), section_identity(cfg.data, "data"),
                                     cfg.train.model_dump(), section_identity(cfg.distill, "distill"),
                                     cfg.ensemble.model_dump(),
                                     [m.cfg.model_dump() for m in prep.members], cfg.seed)
    labels = prep.data.train.y.to(prep.device)
    trained = TrainedStudents()
    for s in range(cfg.student.seeds):
        scratch = train_student(cfg, prep.data, "scratch", s, out, events, cancel, teaching,
                                fingerprint=fingerprint)
        trained.entries.append(scratch.entry)
        trained.models["scratch"] = scratch.model
        trained.test_logits["scratch"].append(scratch.test_logits)
        weights = None
        budget = teaching.budget(cfg, labels)
        for r in range(1, cfg.distill.rounds + 1):
            kd = train_student(cfg, prep.data, "kd", s, out, events, cancel, teaching, weights=weights,
                               round_index=r, fingerprint=fingerprint, budget=budget)
            trained.entries.append(kd.entry)
            trained.models["kd"] = kd.model
            if r < cfg.distill.rounds:
                train_logits, _ = predict_logits(kd.model, prep.data.batches("train", 1024, shuffle=False,
                                                                             augment=False),
                                                 prep.device, precision_for(prep.device))
                budget.next_round(plain_target, train_logits)
                # Re-weighting sees the teachers' target only where it was paid for (all of it at budget 1).
                weights = residual_weights(budget.known_target(plain_target), train_logits)
        trained.test_logits["kd"].append(kd.test_logits)
    return trained


def budget_report(teaching: Teaching, share: float, teachers: int, train_examples: int,
                  students: list[StudentEntry], ensemble_acc: float | None) -> BudgetReport:
    """distill.teacher_budget's report: per round, examples with a teacher target (per student), teacher
    passes (this round and cumulative, summed over the student seeds; what they count is in
    core.distill.budget), mean val/test accuracy and gain recovery (of the means) against the scratch
    students and the target ensemble."""
    scratch = [s.test_acc for s in students if s.kind == "scratch"]
    rounds, cumulative = [], 0
    for r in sorted({s.round or 1 for s in students if s.kind == "kd"}):
        kd = [s for s in students if s.kind == "kd" and (s.round or 1) == r]
        passes = sum(s.teacher_passes or 0 for s in kd)
        cumulative += passes
        vals = [s.val_acc for s in kd if s.val_acc is not None]
        recovery = None
        if ensemble_acc is not None and len(scratch) == len(kd):
            recovery = gain_recovery_over_seeds([s.test_acc for s in kd], scratch, ensemble_acc)["of_means"]
        rounds.append(BudgetRound(round=r, seeds=len(kd), examples=kd[0].teacher_examples or 0, passes=passes,
                                  passes_cumulative=cumulative, val_acc=sum(vals) / len(vals) if vals else None,
                                  test_acc=sum(s.test_acc for s in kd) / len(kd), gain_recovery=recovery))
    live = teaching.mode == "live"
    return BudgetReport(share=share, mode=teaching.mode, counts="forwards" if live else "targets",
                        views=None if live else (teaching.views.num_views if teaching.views is not None else 1),
                        teachers=teachers, train_examples=train_examples,
                        per_round=budget_size(train_examples, share), rounds=rounds)


def teacher_disagreement(test_logits: torch.Tensor) -> torch.Tensor:
    """(N,) generalised Jensen-Shannon divergence of the draws' probabilities, in nats.

    H(mean_i p_i) - mean_i H(p_i): zero when every draw gives the same distribution, largest when
    confident draws pick different classes.
    """
    p = test_logits.float().softmax(dim=-1)  # (M, N, K)

    def entropy(q: torch.Tensor) -> torch.Tensor:
        return -(q * q.clamp_min(1e-12).log()).sum(dim=-1)

    return entropy(p.mean(dim=0)) - entropy(p).mean(dim=0)


def save_test_outputs(prep: Prepared, teachers: TrainedTeachers, combined: dict[str, Combined],
                      student_logits: dict[str, list[torch.Tensor]], path: Path) -> None:
    """Everything the dashboard draws per test example, in one safetensors file.

    Keys: `labels` (N,); `teacher/<label>/s<seed>` logits (N, K); `ensemble/<scheme>` probabilities;
    `weights/<scheme>` per-example member weights (N, M); `student/<kind>/s<seed>` logits;
    `gallery/index`, `gallery/images` (uint8) and `gallery/disagreement` for the test images where
    the teachers disagree most. Per-example outputs live here, not in results.json, which stays small.
    """
    tensors: dict[str, torch.Tensor] = {"labels": prep.data.test.y}
    for t, z in zip(teachers.entries, teachers.logits):
        tensors[t.source] = z["test"]
    for scheme, result in combined.items():
        tensors[f"ensemble/{scheme}"] = result.probs["test"]
        if result.weights is not None:
            tensors[f"weights/{scheme}"] = result.weights["test"]
    for kind, per_seed in student_logits.items():
        for s, z in enumerate(per_seed):
            tensors[f"student/{kind}/s{s}"] = z
    score = teacher_disagreement(torch.stack([z["test"] for z in teachers.logits]))
    top = score.argsort(descending=True)[:GALLERY_SIZE]
    tensors.update({"gallery/index": top, "gallery/disagreement": score[top],
                    "gallery/images": prep.data.test.x[top.to(prep.data.test.x.device)]})
    write_tensors(tensors, path)


def diagnostics_stage(prep: Prepared, teachers: TrainedTeachers,
                      student_logits: dict[str, list[torch.Tensor]]) -> DiagnosticsHeader:
    """Bias-variance-diversity, error correlation and calibration on test, from the cached logits."""
    names = list(dict.fromkeys(t.name for t in teachers.entries))  # members that kept at least one draw
    draws = [sum(t.name == name for t in teachers.entries) for name in names]
    grouped = {split: group_member_major([z[split] for z in teachers.logits], draws) for split in ("val", "test")}
    return DiagnosticsHeader.model_validate(
        diagnose(grouped["test"], prep.data.test.y, member_names=names, val_logits=grouped["val"],
                 val_y=prep.data.val.y, students=student_logits, class_names=prep.data.class_names))


def teacher_costs(prep: Prepared, teachers: TrainedTeachers) -> dict[str, Cost]:
    """Each teacher member's measured cost (a sweep measures them once for all its trials)."""
    data = prep.data
    return {label: measure(model, data.in_chans, data.image_size, prep.device)
            for label, model in teachers.models.items()}


def comparison_stage(prep: Prepared, teachers: TrainedTeachers, ensembles: list[EnsembleEntry],
                     students: TrainedStudents, target_scheme: str, costs: dict[str, Cost] | None = None
                     ) -> tuple[list[ComparisonRow], ComparisonSummary]:
    """One row per method with accuracy, NLL (mean +- std over seeds), ECE and measured cost.

    costs: the teachers' (teacher_costs), when already measured.
    """
    data, device = prep.data, prep.device
    cost_of = costs if costs is not None else teacher_costs(prep, teachers)
    rows = []
    for member in prep.members:
        draws = [t for t in teachers.entries if t.name == member.label]
        if not draws:  # every draw of this member diverged (see results.teachers_dropped)
            continue
        rows.append(row(member.label, "teacher", draws, cost_of[member.label],
                        sum(t.train_seconds for t in draws)))
    # An ensemble runs every teacher draw: its cost is the sum of its members' (each draw costs its model's).
    ens_cost = ensemble_cost([cost_of[t.name] for t in teachers.entries])
    teacher_seconds = sum(t.train_seconds for t in teachers.entries)
    for e in ensembles:
        if e.fitted:
            rows.append(row(f"ensemble/{e.scheme}", "ensemble", [e], ens_cost, teacher_seconds))
    student_cost = measure(students.models["scratch"], data.in_chans, data.image_size, device)
    scratch = [s for s in students.entries if s.kind == "scratch"]
    rows.append(row("student/scratch", "student", scratch, student_cost, sum(s.train_seconds for s in scratch)))
    rounds = sorted({s.round for s in students.entries if s.kind == "kd"})
    for r in rounds:
        kd = [s for s in students.entries if s.kind == "kd" and s.round == r]
        name = "student/kd" if len(rounds) == 1 else f"student/kd-round{r}"
        rows.append(row(name, "student", kd, student_cost, teacher_seconds + sum(s.train_seconds for s in kd)))
    target = next(e for e in ensembles if e.scheme == target_scheme)
    last_kd = [s for s in students.entries if s.kind == "kd" and s.round == rounds[-1]]
    recovery = gain_recovery_over_seeds([s.test_acc for s in last_kd], [s.test_acc for s in scratch],
                                        target.test_acc)
    mean_teacher_params = sum(c.params for c in cost_of.values()) / len(cost_of)
    summary = ComparisonSummary(target_scheme=target_scheme, gain_recovery=GainRecovery(**recovery),
                                student_params=student_cost.params,
                                student_to_teacher_params=student_cost.params / mean_teacher_params,
                                student_to_ensemble_params=student_cost.params / ens_cost.params)
    return rows, summary
