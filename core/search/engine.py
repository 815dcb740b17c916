"""Run a search: teachers once, then trials asked of an Optuna study until the budget is spent.

    sweep row (store) ── study (optuna.db) ── trials: run rows (store) + trials/<point>/ folders

The sweep folder holds the teachers, their logit cache, the shared scratch students and one folder
per trial point, plus sweep.json / sweep.csv (rewritten after every trial). A search run again into
the same folder (or resumed from the store) continues its study: finished trials are not trained
again, and a trial that a kill or a cancel stopped is retried once with the same values, continuing
from its students' checkpoints.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from core.atomic import write_json
from core.cache import CacheStats
from core.config import RunConfig
from core.errors import ModelError
from core.lifecycle import RunStatus, final_status
from core.pipeline import JsonlWriter
from core.prepare import prepare
from core.results.sweep import SweepRow, TrialSummary
from core.runlog import log_event, run_log
from core.search.rows import SweepResult, pick_row, write_sweep_files
from core.search.spec import SearchSpec
from core.search.study import distributions, open_study, storage_url, trial_state_name
from core.search.budget import (MAX_REPEATS_IN_A_ROW, REPEAT_ATTR, RUN_ATTR, exhausted, finished_point,
                                retry_stopped, spent, stopped, tell, trial_statuses)
from core.search.trial import SweepContext, TrialOutcome, claim_trial, run_trial
from core.stages import ensemble_stage, teacher_costs, teacher_stage
from core.store import Heartbeat, RunStore, StoreError, new_run_id
from core.sweep_grid import point_config
from core.train import CancelToken, Event, EventBus

log = logging.getLogger(__name__)

# Optuna user attributes of a trial (kdlab's bookkeeping in the study).
ROW_ATTR, EPOCHS_ATTR = "row", "epochs"


def study_name(sweep_id: str, spec: SearchSpec) -> str:
    """The study's name: --study, else the sweep's id (plus the seed count: more seeds are a new study)."""
    if spec.study:
        return spec.study
    return sweep_id if spec.seeds is None else f"{sweep_id}-seeds{spec.seeds}"


def check_points(base: RunConfig, spec: SearchSpec, data) -> None:
    """Every choice and both ends of every range, as configs the engine can build (before anything trains)."""
    from core.sweep import check_point

    for dim in spec.dimensions:
        values = dim.choices if dim.choices is not None else (dim.low, dim.high)
        for value in values:
            check_point(point_config(base, {dim.field: value}, spec.seeds), data)


def _owned_sweep(store: RunStore, out: Path) -> tuple[str, bool]:
    """The sweep row of folder `out`: (id, found). Refuses a folder another live process is running."""
    existing = store.find_sweep_by_dir(out)
    if existing is None:
        return "", False
    queued_here = existing.status == RunStatus.QUEUED and existing.pid == os.getpid() and existing.host == store.host
    if existing.status in RunStatus.ACTIVE and not queued_here:
        raise StoreError(f"sweep {existing.id}", f"is {existing.status} (process {existing.pid} on {existing.host})",
                         "wait for it, or cancel it first")
    return existing.id, True


def run_search(base: RunConfig, spec: SearchSpec, out: Path, *, store: RunStore, events: EventBus | None = None,
               cancel: CancelToken | None = None, source: str = "cli", heartbeat: Heartbeat | None = None,
               shutting_down: Callable[[], bool] = lambda: False,
               on_trial: Callable[[TrialOutcome], None] | None = None) -> SweepResult:
    """Search `spec` over `base` into the folder `out`, recorded in `store`; returns the rows and the pick."""
    out = Path(out).expanduser().absolute()
    events = events or EventBus()
    cancel = cancel or CancelToken()
    prep = prepare(base, out)  # refuses a folder holding another config; nothing is written yet
    check_points(base, spec, prep.data)
    sweep_id, resumed = _owned_sweep(store, out)
    if not sweep_id:
        taken = {s.id for s in store.sweeps()}
        sweep_id = out.name if out.name not in taken else new_run_id(out.name)
    storage = storage_url(store.data_dir)
    name = study_name(sweep_id, spec)
    study = open_study(spec, storage, name)  # refuses a study of that name about another space
    if resumed:
        store.start_sweep(sweep_id, spec.model_dump(mode="json"), study=name)
    else:
        store.create_sweep(sweep_id, base.to_dict(), spec.model_dump(mode="json"), sweep_dir=out, storage=storage,
                           study=name, name=base.name, source=source)
    beats = heartbeat if heartbeat is not None else Heartbeat(store)
    beats.add(sweep_id, RunStatus.RUNNING)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(base.to_yaml())
    write_json(spec.model_dump(mode="json"), out / "search.json", indent=2)
    writer = JsonlWriter(out / "events.jsonl")
    events.subscribe(writer)
    events.subscribe(log_event)
    exc: BaseException | None = None
    try:
        with run_log(out):
            ctx = build_context(prep, spec, out, sweep_id, store, beats, source, events, cancel, shutting_down,
                                study_name=name)
            return _search(ctx, study, on_trial)
    except BaseException as err:
        exc = err
        raise
    finally:
        writer.close()
        status, error = final_status(exc, shutting_down=shutting_down() or cancel.shutdown)
        if heartbeat is None:
            beats.stop()
        else:
            beats.discard(sweep_id)
        try:
            store.finish_sweep(sweep_id, status, error)
        except StoreError as err:  # the trials are recorded; the sweep row reads as interrupted once reaped
            log.warning("sweep %s: its final status %s was not stored: %s", sweep_id, status, err)


def build_context(prep, spec, out, sweep_id, store, beats, source, events, cancel, shutting_down, *,
                  study_name: str, shared: dict | None = None) -> SweepContext:
    """The teachers (trained, or restored from the folder's checkpoints and cache), their ensembles and cost.

    shared: what a worker process gets from the search's parent instead of measuring it again: the
    ensembles' results entries, the teachers' costs, and the schemes its trials can learn from (only
    those are fitted again).
    """
    stats = CacheStats()
    warnings: list[str] = list(prep.warnings)

    def warn(message: str) -> None:
        warnings.append(message)
        events.emit(Event("info", "sweep", message=f"warning: {message}"))

    events.emit(Event("stage", "teachers", message=f"training {prep.trainings} teacher draw(s)"))
    trained = teacher_stage(prep, out, events, cancel, stats, warn)
    if not trained.entries:
        raise ModelError("teachers", "every teacher draw diverged (non-finite loss or logits)",
                         "lower train.lr, or check the teachers' weights files")
    if shared is None:
        ensembles, combined = ensemble_stage(prep, trained.stack(), events)
        events.emit(Event("stage", "teachers", message="measuring the teachers' cost"))
        costs = teacher_costs(prep, trained)
    else:
        _, combined = ensemble_stage(prep, trained.stack(), events, schemes=shared["schemes"])
        ensembles, costs = shared["ensembles"], shared["costs"]
    return SweepContext(prep=prep, spec=spec, out=out, sweep_id=sweep_id, sweep_name=prep.cfg.name, store=store,
                        heartbeat=beats, source=source, trained=trained, ensembles=ensembles, combined=combined,
                        costs=costs, stats=stats, events=events, cancel=cancel,
                        shutting_down=shutting_down, warnings=warnings, study_name=study_name,
                        store_url=storage_url(store.data_dir) if store is not None else "")


def _search(ctx: SweepContext, study: optuna.Study, on_trial: Callable[[TrialOutcome], None] | None) -> SweepResult:
    retried = retry_stopped(ctx, study)
    if retried:
        ctx.events.emit(Event("info", "sweep", message=f"retrying {retried} stopped trial(s) where they stopped"))
    _publish(ctx, _result(ctx, study))
    if ctx.spec.executor == "processes":
        from core.search.workers import run_in_processes

        run_in_processes(ctx, study)
    elif ctx.spec.executor == "ray":
        from core.search.ray_executor import run_in_ray

        run_in_ray(ctx, study)
    else:
        trial_loop(ctx, study, on_trial)
    result = _result(ctx, study)
    _publish(ctx, result)
    ctx.events.emit(Event("stage", "sweep", message=f"done: {len(result.rows)} finished trial(s), "
                          f"picked trial {result.best_trial}"))
    return result


def trial_loop(ctx: SweepContext, study: optuna.Study, on_trial: Callable[[TrialOutcome], None] | None = None,
               lock: AbstractContextManager | None = None) -> None:
    """Ask, train, tell until the budget is spent; with `lock` (worker processes sharing the study),
    asking, claiming a run row and telling happen under it, so K workers never overshoot the budget."""
    spec = ctx.spec
    guard = lock if lock is not None else nullcontext()
    dists = distributions(spec)
    repeats = 0  # proposals in a row of points already finished
    while True:
        with guard:
            if lock is not None:  # a worker that died left its trial running: retried by a live one
                retry_stopped(ctx, study, dead_only=True)
            done = spent(study, trial_statuses(ctx))
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if done + running >= spec.trials or nothing_new(ctx, study, repeats):
                return
            ctx.cancel.check()
            trial = study.ask(dists)
            point = {d.field: trial.params[d.field] for d in spec.dimensions}
            earlier = None if RUN_ATTR in trial.user_attrs else finished_point(study, trial.params)
            if earlier is not None:  # a retry (RUN_ATTR set) is never a repeat: it has not finished
                tell_repeat(ctx, study, trial, earlier)
                repeats += 1
                continue
            repeats = 0
            try:
                run_id = claim_trial(ctx, trial, point, trial.user_attrs.get(RUN_ATTR))
            except BaseException:
                tell(study, trial, state=TrialState.FAIL)
                raise
        ctx.events.emit(Event("stage", "sweep", message=f"trial {done + running + 1}/{spec.trials}",
                              metrics={"trial": trial.number, "done": done, "trials": spec.trials}))
        try:
            outcome = run_trial(ctx, trial, point, run_id)
        except BaseException:  # cancelled, interrupted, Ctrl-C: the trial is retried on resume
            with guard:
                tell(study, trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        with guard:
            trial.set_user_attr(EPOCHS_ATTR, outcome.epochs)
            if outcome.status == RunStatus.DONE:
                trial.set_user_attr(ROW_ATTR, outcome.row.to_json())
                trial.set_user_attr("val_acc_std", outcome.val_acc_std)
                tell(study, trial, values=outcome.values)
            elif outcome.status == RunStatus.PRUNED:
                tell(study, trial, state=TrialState.PRUNED)
            else:
                tell(study, trial, state=TrialState.FAIL)
            _publish(ctx, _result(ctx, study))
        if on_trial is not None:
            on_trial(outcome)


def tell_repeat(ctx: SweepContext, study: optuna.Study, trial: optuna.Trial, earlier) -> None:
    """A proposal of a finished point: Optuna is told the earlier result (nothing trains, no budget is
    spent). Every executor's asking goes through this."""
    trial.set_user_attr(REPEAT_ATTR, earlier.number)
    if "val_acc_std" in earlier.user_attrs:
        trial.set_user_attr("val_acc_std", earlier.user_attrs["val_acc_std"])
    tell(study, trial, values=earlier.values)
    log.info("sweep %s: trial %d proposes trial %d's point again; its result is reused and the budget "
             "is not spent", ctx.sweep_id, trial.number, earlier.number)


def nothing_new(ctx: SweepContext, study: optuna.Study, repeats: int) -> bool:
    """The search ends before its budget: every point of a finite space finished, or the sampler only
    repeats (`repeats` proposals of finished points in a row). Every executor asks this."""
    if exhausted(study, ctx.spec.dimensions):
        message = "every point of the space has finished; the search ends before its budget"
    elif repeats >= MAX_REPEATS_IN_A_ROW:
        message = (f"the sampler proposed only finished points {repeats} times in a row; "
                   "the search ends before its budget")
    else:
        return False
    if message not in ctx.warnings:
        ctx.warnings.append(message)
    ctx.events.emit(Event("info", "sweep", message=message))
    return True


def _result(ctx: SweepContext, study: optuna.Study) -> SweepResult:
    """The sweep's rows and trial summaries, rebuilt from the study (so a resumed sweep reports every trial)."""
    spec = ctx.spec
    trials = study.get_trials(deepcopy=False)
    statuses = trial_statuses(ctx)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    pareto: set[int] = set()
    if spec.multi_objective and any(t.state == TrialState.COMPLETE for t in trials):
        pareto = {t.number for t in study.best_trials if REPEAT_ATTR not in t.user_attrs}
    rows: list[SweepRow] = []
    summaries: list[TrialSummary] = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and ROW_ATTR in t.user_attrs:
            row = SweepRow.model_validate(t.user_attrs[ROW_ATTR])
            rows.append(row.model_copy(update={"trial": t.number, "run_id": t.user_attrs.get(RUN_ATTR)}))
        state = trial_state_name(t.state)
        if REPEAT_ATTR in t.user_attrs:
            state = "repeat"  # told the earlier trial's result; trained nothing
        elif t.state == TrialState.FAIL and (stopped(t, statuses) or t.number in retried):
            state = "cancelled" if statuses.get(t.user_attrs.get(RUN_ATTR, "")) == RunStatus.CANCELLED \
                else "interrupted"  # stopped, and retried (or to be) with the same values
        steps = t.intermediate_values
        summaries.append(TrialSummary(
            number=t.number, state=state, run_id=t.user_attrs.get(RUN_ATTR), params=dict(t.params),
            values=dict(zip(spec.objectives, t.values)) if t.state == TrialState.COMPLETE and t.values else None,
            val_acc_std=t.user_attrs.get("val_acc_std"), epochs=int(t.user_attrs.get(EPOCHS_ATTR, 0)),
            last_step=max(steps) if steps else None, pareto=t.number in pareto))
    target_accs = {e.scheme: e.test_acc for e in ctx.ensembles if e.fitted}
    names = [d.field for d in spec.dimensions]
    if spec.search == "grid":  # a grid reads in grid order (the first field slowest), as it always has
        rows.sort(key=lambda r: tuple(d.choices.index(r.value(d.field)) for d in spec.dimensions))
    best = pick_row(rows, spec)
    return SweepResult(names, rows, best, ctx.trained.entries, target_accs, ctx.warnings, trials=summaries,
                       pick_rule=spec.pick_rule(), sweep_id=ctx.sweep_id, study=study.study_name)


def _publish(ctx: SweepContext, result: SweepResult) -> None:
    """sweep.json / sweep.csv, and the sweep row's progress, summary and pick."""
    write_sweep_files(result, ctx.out, ctx.spec)
    counts = result.counts()
    done = sum(n for state, n in counts.items() if state in ("finished", "pruned", "failed"))
    best = result.rows[result.best] if result.best is not None else None
    summary = {"trials": counts, "budget": ctx.spec.trials, "search": ctx.spec.search,
               "best_val_acc": best.kd_val_acc if best else None,
               "best_test_acc": best.kd_test_acc_mean if best else None,
               "best_trial": result.best_trial}
    ctx.store.update_sweep(ctx.sweep_id, progress=min(done / ctx.spec.trials, 0.99), summary=summary,
                           best=best.run_id if best else None)
