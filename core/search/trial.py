"""One trial of a search: a run row of the store, its distilled students (reported to the pruner
epoch by epoch), its scratch twins (shared per student setting) and its results.json.

A trial's folder is named by the fingerprint of its point (its config without the seed count), so a
retried trial, a trial that samples a point again and a rerun with more seeds all continue from the
same students' checkpoints instead of training them again.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import optuna
import torch

from core.atomic import write_json
from core.bench import Cost
from core.cache import CacheStats
from core.config import RunConfig
from core.ensemble import Combined
from core.errors import Cancelled
from core.evaluate import mean_std
from core.lifecycle import Pruned, RunStatus
from core.prepare import Prepared, config_fingerprint
from core.results import CacheCounts, DatasetInfo, EnsembleEntry, RunResults, StudentEntry
from core.results.sweep import SweepRow
from core.search.spec import SearchSpec
from core.stages import TrainedStudents, TrainedTeachers, comparison_stage, teaching_stage
from core.store import Heartbeat, RunStore, record_run
from core.students import StudentRun, Teaching, train_student
from core.sweep_grid import point_config, point_label, scratch_setting
from core.train import CancelToken, Event, EventBus

log = logging.getLogger(__name__)

FALLBACK_SCHEME = "mean_prob"  # as core.pipeline: the target when a point's scheme cannot be fitted
PRUNE_SOURCE = "student/kd-r1/s0"  # the student whose val accuracy per epoch the pruner sees


@dataclass
class SweepContext:
    """What every trial of one sweep shares: the teachers, their targets, caches and the store."""

    prep: Prepared                        # for the base config
    spec: SearchSpec
    out: Path                             # the sweep folder
    sweep_id: str
    sweep_name: str
    store: RunStore
    heartbeat: Heartbeat
    source: str                           # 'cli' or 'dashboard'
    trained: TrainedTeachers
    ensembles: list[EnsembleEntry]
    combined: dict[str, Combined]
    costs: dict[str, Cost]                # the teachers', measured once
    stats: CacheStats
    events: EventBus                      # the sweep's own bus (its events.jsonl, progress, the CLI's bars)
    cancel: CancelToken
    shutting_down: Callable[[], bool] = lambda: False
    study_name: str = ""
    store_url: str = ""                   # the study's Optuna storage
    # A lock on a folder other processes of the search may train into at the same time (worker
    # processes: two trials of one point, or two trials sharing a scratch twin); none for one process.
    folder_lock: Callable[[Path], AbstractContextManager] = lambda path: nullcontext()
    teachings: dict[tuple[str, str, int], Teaching] = field(default_factory=dict)
    scratch: dict[str, list[StudentRun]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrialOutcome:
    """What became of a trial: its final status, objective values, sweep row and epochs trained."""

    run_id: str
    status: RunStatus
    values: list[float] | None = None     # in spec.objectives order, for finished trials
    row: SweepRow | None = None
    val_acc_std: float | None = None
    epochs: int = 0
    last_step: int | None = None


class _LinkedToken(CancelToken):
    """A trial's cancel token: set by its pruner, or by the sweep's token (the user, a shutdown)."""

    def __init__(self, parent: CancelToken) -> None:
        super().__init__()
        self.parent = parent

    @property
    def cancelled(self) -> bool:
        return super().cancelled or self.parent.cancelled

    @property
    def shutdown(self) -> bool:
        return self.parent.shutdown

    @shutdown.setter
    def shutdown(self, value: bool) -> None:
        pass  # a trial's shutdown is its sweep's (CancelToken.__init__ assigns it)

    def check(self) -> None:
        self.parent.check()
        super().check()


class _PruneReporter:
    """EventBus subscriber: the first distilled student's val accuracy per epoch goes to the pruner."""

    def __init__(self, trial: optuna.Trial, token: _LinkedToken, enabled: bool) -> None:
        self.trial, self.token, self.enabled = trial, token, enabled
        self.pruned_at: int | None = None
        self.last_step: int | None = None
        self.epochs = 0

    def __call__(self, event: Event) -> None:
        if event.kind == "epoch" and event.source.startswith("student/"):
            self.epochs += 1
        if not (self.enabled and event.kind == "epoch" and event.source == PRUNE_SOURCE):
            return
        value = (event.metrics or {}).get("val/acc")
        if value is None or event.epoch is None:
            return
        self.trial.report(float(value), int(event.epoch))
        self.last_step = int(event.epoch)
        if self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = int(event.epoch)
            self.token.cancel()  # the student stops at its next step; the trial ends as pruned


def trial_folder(ctx: SweepContext, cfg: RunConfig) -> Path:
    raw = cfg.identity()  # a field added since keeps older trial folders' names at its default
    raw["student"].pop("seeds")  # more seeds later continue the same folder
    return ctx.out / "trials" / config_fingerprint(raw)[:16]


def _scratch_key(cfg: RunConfig, with_views: bool) -> str:
    return config_fingerprint(*scratch_setting(cfg, with_views))


def _teaching(ctx: SweepContext, cfg: RunConfig, scheme: str) -> Teaching:
    d = cfg.distill
    key = (scheme, d.teaching, d.view_stride)
    if key not in ctx.teachings:  # trials with the same target share it: the view cache is read once
        ctx.teachings[key] = teaching_stage(replace(ctx.prep, cfg=cfg), ctx.combined[scheme], ctx.trained.draws,
                                            ctx.out, ctx.stats)
    return ctx.teachings[key]


def _relative_to(path: str, base: Path, folder: Path) -> str:
    """A path relative to the sweep folder, made relative to a trial's folder (teachers live in the sweep)."""
    return os.path.relpath(base / path, folder)


def claim_trial(ctx: SweepContext, trial: optuna.Trial, point: dict[str, Any], run_id: str | None) -> str:
    """The trial's run row: a new one, or (a retry) the interrupted one, running again in its folder."""
    cfg = point_config(ctx.prep.cfg, point, ctx.spec.seeds)
    folder = trial_folder(ctx, cfg)
    if run_id is None:
        run_id = ctx.store.create_run(cfg, name=f"{ctx.sweep_name} #{trial.number}", source=ctx.source,
                                      status=RunStatus.RUNNING, run_dir=folder, sweep_id=ctx.sweep_id,
                                      trial=trial.number)
    else:
        if ctx.store.get_run(run_id).status not in RunStatus.ACTIVE:
            ctx.store.requeue(run_id)
        ctx.store.start_run(run_id)
        ctx.store.set_trial(run_id, trial.number)
    trial.set_user_attr("run_id", run_id)
    return run_id


def run_trial(ctx: SweepContext, trial: optuna.Trial, point: dict[str, Any], run_id: str) -> TrialOutcome:
    """Train and record one claimed trial (claim_trial); its run row ends done, pruned, failed, cancelled
    or interrupted."""
    spec = ctx.spec
    cfg = point_config(ctx.prep.cfg, point, spec.seeds)
    folder = trial_folder(ctx, cfg)
    token = _LinkedToken(ctx.cancel)
    reporter = _PruneReporter(trial, token, enabled=spec.prune != "none")
    outcome = TrialOutcome(run_id, RunStatus.RUNNING)
    trainings = cfg.student.seeds * 2
    try:
        with record_run(ctx.store, run_id, folder, trainings, heartbeat=ctx.heartbeat,
                        shutting_down=ctx.shutting_down) as recorder:
            bus = EventBus(recorder, reporter, ctx.events.emit)
            bus.emit(Event("stage", "trial", message=f"trial {trial.number}: {point_label(point)}",
                           metrics={"trial": trial.number}))
            _train(ctx, cfg, point, folder, bus, token, reporter, outcome)
        outcome.status = RunStatus.DONE
    except Pruned:
        outcome.status = RunStatus.PRUNED
    except (Cancelled, KeyboardInterrupt):
        outcome.status = RunStatus.INTERRUPTED if ctx.cancel.shutdown else RunStatus.CANCELLED
        outcome.epochs, outcome.last_step = reporter.epochs, reporter.last_step
        raise
    except Exception as err:  # noqa: BLE001 - a failed trial is recorded (run row, Optuna FAIL); the search goes on
        log.info("trial %d (%s) failed: %s", trial.number, run_id, err)
        outcome.status = RunStatus.FAILED
    outcome.epochs, outcome.last_step = reporter.epochs, reporter.last_step
    return outcome


def _train(ctx: SweepContext, cfg: RunConfig, point: dict[str, Any], folder: Path, bus: EventBus,
           token: _LinkedToken, reporter: _PruneReporter, outcome: TrialOutcome) -> None:
    prep = replace(ctx.prep, cfg=cfg)
    started = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    scheme = cfg.ensemble.scheme if cfg.ensemble.scheme in ctx.combined else FALLBACK_SCHEME
    if scheme != cfg.ensemble.scheme:
        message = (f"ensemble.scheme: '{cfg.ensemble.scheme}' could not be fitted; this trial learns from "
                   f"'{FALLBACK_SCHEME}'")
        if message not in ctx.warnings:
            ctx.warnings.append(message)
        bus.emit(Event("info", "trial", message=f"warning: {message}"))
    teaching = _teaching(ctx, cfg, scheme)
    fingerprint = folder.name
    kd_runs: list[StudentRun] = []
    with ctx.folder_lock(folder.parent / f"{folder.name}.lock"):  # a second trial of this point restores these
        for s in range(cfg.student.seeds):
            try:
                kd_runs.append(train_student(cfg, prep.data, "kd", s, folder, bus, token, teaching,
                                             fingerprint=fingerprint))
            except Cancelled:
                if reporter.pruned_at is not None and not ctx.cancel.cancelled:
                    bus.emit(Event("info", "trial", message=f"pruned after epoch {reporter.pruned_at}: its val "
                                   "accuracy is behind the other trials' at that epoch"))
                    raise Pruned() from None
                raise
    key = _scratch_key(cfg, teaching.views is not None)
    shared = ctx.scratch.setdefault(key, [])
    home = ctx.out / "scratch" / key
    home.parent.mkdir(parents=True, exist_ok=True)
    with ctx.folder_lock(home.parent / f"{key}.lock"):  # scratch twins: once per student setting, for all trials
        for s in range(len(shared), cfg.student.seeds):
            shared.append(train_student(cfg, prep.data, "scratch", s, home, bus, token, teaching, fingerprint=key))
    scratch_runs = shared[:cfg.student.seeds]
    outcome.row, outcome.values, outcome.val_acc_std = _results(ctx, prep, cfg, point, folder, scheme, teaching,
                                                                 kd_runs, scratch_runs, time.time() - started)


def _results(ctx: SweepContext, prep: Prepared, cfg: RunConfig, point: dict[str, Any], folder: Path, scheme: str,
             teaching: Teaching, kd_runs: list[StudentRun], scratch_runs: list[StudentRun], seconds: float
             ) -> tuple[SweepRow, list[float], float | None]:
    """The trial's results.json (a run's, without diagnostics), its sweep row and its objective values."""
    from core.sweep import sweep_row  # the row shape sweeps have always written

    scratch_entries = [_moved(r.entry, ctx.out / "scratch" / _scratch_key(cfg, teaching.views is not None), folder)
                       for r in scratch_runs]
    students = TrainedStudents(entries=[*scratch_entries, *(r.entry for r in kd_runs)],
                               models={"scratch": scratch_runs[0].model, "kd": kd_runs[0].model})
    comparison, summary = comparison_stage(prep, ctx.trained, ctx.ensembles, students, scheme, costs=ctx.costs)
    teachers = [t.model_copy(update={"weights": _relative_to(t.weights, ctx.out, folder)})
                for t in ctx.trained.entries]
    results = RunResults(name=cfg.name, status="done", dataset=DatasetInfo(**prep.data.summary()),
                         class_names=list(prep.data.class_names), device=str(prep.device), torch=torch.__version__,
                         seconds=seconds, warnings=list(ctx.warnings), teachers=teachers,
                         teachers_dropped=ctx.trained.dropped,
                         logit_cache=CacheCounts(hits=ctx.stats.hits, misses=ctx.stats.misses),
                         ensembles=ctx.ensembles, target_scheme=scheme, teaching=teaching.describe(),
                         students=students.entries, comparison=comparison, summary=summary,
                         stages_done=["teachers", "ensembles", "students", "comparison"])
    write_json(results.to_json(), folder / "results.json", indent=2)
    kd_row = next(r for r in comparison if r.method == "student/kd")
    ensemble_acc = next(e.test_acc for e in ctx.ensembles if e.scheme == scheme)
    kd_entries = [r.entry for r in kd_runs]
    row = sweep_row(point, list(point), kd_entries, [r.entry for r in scratch_runs], ensemble_acc)
    vals = [e.val_acc for e in kd_entries if e.val_acc is not None]
    spread = mean_std(vals)["std"] if len(vals) > 1 else None  # one seed has no spread
    by_objective = {"val_acc": row.kd_val_acc, "latency_ms": kd_row.latency_ms, "params": float(kd_row.params)}
    row = row.model_copy(update={"kd_val_acc_std": spread, "latency_ms": kd_row.latency_ms,
                                 "student_params": kd_row.params, "folder": str(folder.relative_to(ctx.out))})
    return row, [float(by_objective[o]) for o in ctx.spec.objectives], spread


def _moved(entry: StudentEntry, home: Path, folder: Path) -> StudentEntry:
    """A shared scratch student's entry with its weights path seen from the trial's folder."""
    return entry.model_copy(update={"weights": _relative_to(entry.weights, home, folder)})
