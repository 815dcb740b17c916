"""One experiment, end to end: check everything, train teachers, evaluate, write results.

`prepare` (core.prepare) does every check that can fail on bad input before anything is written, so
a bad run leaves nothing half-written behind. `run_experiment` then runs the stages (core.stages)
and writes into the output folder as it goes:

  config.yaml     the validated config; `kdlab run config.yaml` reproduces the run
  events.jsonl    one JSON object per event, appended as they happen
  teachers/<label>_s<seed>/  per-epoch checkpoints and final weights
  cache/          teacher logits per split (and per augmentation view), keyed by weights hash
  students/<kind>_s<seed>/  the same for every student
  test_outputs.safetensors  per-example test outputs of every model (see stages.save_test_outputs)
  results.json    core.results.RunResults, rewritten atomically after every stage
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from core.atomic import write_json
from core.cache import CacheStats
from core.errors import ModelError
from core.lifecycle import RunStatus, final_status
from core.prepare import Member, Prepared, check_output_dir, config_fingerprint, prepare, teacher_spec  # noqa: F401
from core.runlog import log_event, run_log
from core.results import CacheCounts, DatasetInfo, DiagnosticsHeader, RunResults
from core.stages import (GALLERY_SIZE, TrainedTeachers, budget_report, comparison_stage,  # noqa: F401
                         diagnostics_stage, ensemble_stage, save_test_outputs, student_stage, teacher_disagreement,
                         teacher_stage, teaching_stage, train_teacher)
from core.train import CancelToken, Event, EventBus

log = logging.getLogger(__name__)

FALLBACK_SCHEME = "mean_logit"  # fits nothing, so it always works; the cross-entropy centroid


class JsonlWriter:
    """Event subscriber that appends one JSON line per event and flushes, so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1)

    def __call__(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_dict()) + "\n")

    def close(self) -> None:
        self._file.close()


def run_experiment(prep: Prepared, out: Path, events: EventBus | None = None,
                   cancel: CancelToken | None = None) -> RunResults:
    """Teachers -> logit cache -> ensembles -> students -> comparison, written into `out` as it goes.

    results.json is rewritten after every stage, so a failure in a later stage keeps the earlier
    stages' results.
    """
    out = Path(out)
    events = events or EventBus()
    cancel = cancel or CancelToken()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(prep.cfg.to_yaml())
    writer = JsonlWriter(out / "events.jsonl")
    events.subscribe(writer)
    events.subscribe(log_event)
    with run_log(out):
        return _run_stages(prep, out, events, cancel, writer)


def _run_stages(prep: Prepared, out: Path, events: EventBus, cancel: CancelToken, writer: JsonlWriter
                ) -> RunResults:
    started = time.time()
    results = RunResults(name=prep.cfg.name, dataset=DatasetInfo(**prep.data.summary()),
                         class_names=list(prep.data.class_names), device=str(prep.device),
                         torch=torch.__version__, warnings=list(prep.warnings))

    def warn(message: str) -> None:
        results.warnings = [*results.warnings, message]
        events.emit(Event("info", "run", message=f"warning: {message}"))

    def save(stage: str | None = None, status: str = "running") -> None:
        if stage is not None:
            results.stage_done(stage)
        results.status = status
        results.seconds = time.time() - started
        write_json(results.to_json(), out / "results.json", indent=2)

    try:
        events.emit(Event("stage", "teachers", message=f"training {prep.trainings} teacher draw(s)",
                          metrics={"trainings": prep.trainings}))
        stats = CacheStats()
        trained = teacher_stage(prep, out, events, cancel, stats, warn)
        results.teachers, results.teachers_dropped = trained.entries, trained.dropped
        if not trained.entries:
            raise ModelError("teachers", "every teacher draw diverged (non-finite loss or logits)",
                             "lower train.lr, or check the teachers' weights files")
        results.logit_cache = CacheCounts(hits=stats.hits, misses=stats.misses)
        save("teachers")

        events.emit(Event("stage", "ensembles", message="combining teachers"))
        results.ensembles, combined = ensemble_stage(prep, trained.stack(), events)
        scheme = prep.cfg.ensemble.scheme
        if scheme not in combined:  # e.g. a val split too small to fit it: teach with the default
            reason = results.ensemble(scheme).error
            warn(f"ensemble.scheme: '{scheme}' could not be fitted ({reason}); the students learn from "
                 f"'{FALLBACK_SCHEME}' instead")
            scheme = FALLBACK_SCHEME
        results.target_scheme = scheme
        save("ensembles")

        events.emit(Event("stage", "students", message=f"training {prep.cfg.student.seeds} scratch and "
                          f"{prep.cfg.student.seeds * prep.cfg.distill.rounds} distilled student(s)"))
        target = combined[scheme]
        teaching = teaching_stage(prep, target, trained.draws, out, stats)
        results.teaching = teaching.describe()
        results.logit_cache = CacheCounts(hits=stats.hits, misses=stats.misses)
        students = student_stage(prep, teaching, target.probs["train"], out, events, cancel)
        results.students = students.entries
        results.teacher_budget = budget_report(teaching, prep.cfg.distill.teacher_budget, len(trained.draws),
                                               len(prep.data.train), students.entries,
                                               results.ensemble(scheme).test_acc)
        save("students")

        save_test_outputs(prep, trained, combined, students.test_logits, out / "test_outputs.safetensors")
        results.artifacts = {"test_outputs": "test_outputs.safetensors"}
        events.emit(Event("stage", "diagnostics", message="bias, variance, diversity"))
        try:
            results.diagnostics = diagnostics_stage(prep, trained, students.test_logits)
        except Exception as err:  # noqa: BLE001 - diagnostics explain a run, never cost it its results
            warn(f"diagnostics: {type(err).__name__}: {err}")
            results.diagnostics = DiagnosticsHeader(error=str(err))
        save("diagnostics")

        events.emit(Event("stage", "comparison", message="measuring cost"))
        results.comparison, results.summary = comparison_stage(prep, trained, results.ensembles, students, scheme)
        save("comparison", "done")
        events.emit(Event("stage", "run", message="done", metrics={"seconds": results.seconds}))
        return results
    except BaseException as err:  # Ctrl-C included: the stages done so far are kept, with the reason
        status, error = final_status(err, shutting_down=cancel.shutdown)
        save(status=status.value)
        if status in (RunStatus.CANCELLED, RunStatus.INTERRUPTED):
            events.emit(Event("cancelled", "run", message=f"{status.value} after: "
                              f"{', '.join(results.stages_done) or 'no stage'}"))
        else:  # the caller reports the error itself; the log keeps it with the run
            log.info("run %s ended %s: %s", prep.cfg.name, status.value, error)
        raise
    finally:
        writer.close()
