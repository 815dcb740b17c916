"""The ray executor: a search's trials as Ray Tune trials, on a Ray cluster or a Ray started for the sweep.

    driver (this process)                                   Ray workers
    ─────────────────────                                   ───────────
    KdlabOptunaSearch  ── asks kdlab's study (optuna.db) ─▶  kdlab_trial(config, payload)   (ray_trial.py)
      claims the trial's run row in the store                 restores the teachers from the sweep folder,
    TrialRecorder (tune.Callback) ◀── reports per epoch ───   trains the students, reports events per epoch
      writes events, final status and results into the store  and the trial's results at the end
    ASHAScheduler / MedianStoppingRule: Tune's pruning on the first KD student's val accuracy per epoch

The study and the run store stay kdlab's record, exactly as for the local executor, so the dashboard
follows a Ray sweep as any sweep, and `kdlab resume SWEEP_ID` continues it (the stopped trials are
retried once from their students' checkpoints). Tune's own experiment folder (its logs, `tuner.pkl`)
is kept in <sweep>/ray/ for inspection; it is not how a sweep resumes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any
from urllib.parse import urlparse

import optuna
from optuna.trial import TrialState

from core.errors import Cancelled, ConfigError, KdlabError
from core.lifecycle import RunStatus
from core.search.budget import RUN_ATTR, finished_point, tell
from core.search.engine import EPOCHS_ATTR, ROW_ATTR, nothing_new, tell_repeat
from core.search.ray_trial import (EPOCHS, EVENTS, FINAL, RESULTS, ROW, RUN_KEY, STD, TRIAL_KEY, VALUES, RayPayload,
                                   kdlab_trial)
from core.search.study import distributions
from core.search.trial import SweepContext, claim_trial
from core.search.workers import shared_with_workers, threads_per_worker
from core.store import StoreRecorder
from core.train import Event

log = logging.getLogger(__name__)

ADDRESS_TIMEOUT_S = 3.0   # an address that does not answer a TCP connect in this long is refused


def require_ray():
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
        from ray import tune  # noqa: F401 - Ray Tune is what the executor needs
    except ImportError:
        raise ConfigError("--executor", "ray is not installed (it is an optional extra)",
                          "pip install 'kdlab[ray]', or use --executor processes") from None
    return ray


def cluster_address(ray_address: str | None) -> str | None:
    """The cluster to join: --ray-address, else RAY_ADDRESS, else None (a local Ray for the sweep)."""
    return ray_address or os.environ.get("RAY_ADDRESS") or None


def check_address(address: str | None) -> None:
    """Refuse, within ADDRESS_TIMEOUT_S, a cluster address whose head does not answer.

    ray.init on a dead address retries its connection for a minute or more; a TCP connect to the
    head's port says the same in seconds. 'auto' and 'local' are Ray's own words and not probed.
    """
    if address is None or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if parsed.hostname is None or parsed.port is None:
        raise ConfigError("--ray-address", f"'{address}' is not HOST:PORT", "give the head's address, e.g. "
                          "10.0.0.5:6379 (or ray://10.0.0.5:10001), or leave it out for a local Ray")
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as err:
        raise ConfigError("--ray-address", f"no Ray head answers at {address} ({err})",
                          "check the address (`ray status` on the head prints it) or leave it out for a "
                          "local Ray") from None


class _Detached:
    """What Tune's pickled tuner state holds in place of kdlab's searcher and callback (they hold the
    store and the study; a kdlab sweep resumes from those, not from Tune's tuner.pkl)."""

    def __init__(self, name: str) -> None:
        self.name = name


def _make_searcher(ctx: SweepContext, study: optuna.Study):
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class KdlabOptunaSearch(OptunaSearch):
        """Ray Tune's Optuna integration on kdlab's study, with kdlab's bookkeeping around ask and tell:
        a run row claimed per trial, proposals of finished points told their result (no budget spent),
        at most `workers` trials at once, and a pruned trial told PRUNED (not COMPLETE at its last epoch)."""

        def __init__(self) -> None:
            spec = ctx.spec
            metric = list(spec.objectives) if spec.multi_objective else spec.objectives[0]
            modes = ["max" if d == "maximize" else "min" for d in spec.directions]
            super().__init__(space=distributions(spec), metric=metric, mode=modes if spec.multi_objective else modes[0],
                             sampler=study.sampler, study_name=study.study_name,
                             storage=optuna.storages.RDBStorage(ctx.store_url))
            self.live: set[str] = set()
            self.repeats = 0

        def suggest(self, trial_id: str):
            if len(self.live) >= ctx.spec.workers or ctx.cancel.cancelled:
                return None  # Tune asks again when a trial ends
            while True:
                if nothing_new(ctx, self._ot_study, self.repeats):
                    return Searcher.FINISHED
                params = super().suggest(trial_id)
                trial = self._ot_trials[trial_id]
                earlier = None if RUN_ATTR in trial.user_attrs else finished_point(self._ot_study, trial.params)
                if earlier is None:
                    break
                tell_repeat(ctx, self._ot_study, trial, earlier)
                del self._ot_trials[trial_id]  # the next ask under this Tune trial id is a new Optuna trial
                self.repeats += 1
            self.repeats = 0
            point = {d.field: trial.params[d.field] for d in ctx.spec.dimensions}
            run_id = claim_trial(ctx, trial, point, trial.user_attrs.get(RUN_ATTR))
            self.live.add(trial_id)
            return {**params, RUN_KEY: run_id, TRIAL_KEY: trial.number}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            # The first KD student's val accuracy at its epoch (not Tune's iteration count, which starts
            # again when a trial is recovered), as the local executor reports it to the study.
            trial = self._ot_trials.get(trial_id)
            if trial is not None and not result.get(FINAL) and "epoch" in result:
                trial.report(float(result["val_acc"]), int(result["epoch"]))

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            self.live.discard(trial_id)
            trial = self._ot_trials.get(trial_id)
            if trial is None or trial_id in self._completed_trials:
                return
            self._completed_trials.add(trial_id)
            result = result or {}
            if result.get(FINAL):
                trial.set_user_attr(ROW_ATTR, json.loads(result[ROW]))
                trial.set_user_attr(EPOCHS_ATTR, int(result.get(EPOCHS, 0)))
                if result.get(STD) is not None:
                    trial.set_user_attr("val_acc_std", result[STD])
                tell(self._ot_study, trial, values=result[VALUES])
            elif error or ctx.cancel.cancelled:  # failed, or stopped by a cancel: retried on resume if stopped
                tell(self._ot_study, trial, state=TrialState.FAIL, skip_if_finished=True)
            else:  # ended by Tune's scheduler before its final report: pruned
                trial.set_user_attr(EPOCHS_ATTR, int(result.get(EPOCHS, 0) or 0))
                tell(self._ot_study, trial, state=TrialState.PRUNED)

        def fail_live(self) -> None:
            """Trials Tune left running when it stopped (a cancel ends the experiment without completing
            them): failed in the study, so a resume retries them once with the same values."""
            for trial_id in list(self.live):
                self.on_trial_complete(trial_id, error=True)

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            log.debug("the study and the run store are the search's record; Tune's searcher state is not saved")

        def __reduce__(self):
            return _Detached, ("KdlabOptunaSearch",)

    return KdlabOptunaSearch()


def _make_recorder(ctx: SweepContext):
    from ray.tune import Callback

    class TrialRecorder(Callback):
        """Driver side: every Ray trial's reports into its run row (events, progress, final status, results)."""

        def __init__(self) -> None:
            self.recorders: dict[str, StoreRecorder] = {}

        def _recorder(self, trial) -> StoreRecorder | None:
            run_id = trial.config.get(RUN_KEY)
            if run_id is None:
                return None
            if trial.trial_id not in self.recorders:
                record = ctx.store.get_run(run_id)
                cfg = record.config
                trainings = int(cfg["student"].get("seeds", 1)) * 2
                self.recorders[trial.trial_id] = rec = StoreRecorder(ctx.store, run_id, record.run_dir, trainings)
                ctx.heartbeat.add(run_id, RunStatus.RUNNING, rec.flush)
            return self.recorders[trial.trial_id]

        def _relay(self, trial, result: dict) -> None:
            rec = self._recorder(trial)
            for raw in result.get(EVENTS, ()):
                event = Event(**raw)
                if rec is not None:
                    rec(event)
                ctx.events.emit(event)

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            self._recorder(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self._relay(trial, result)

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            # Tune restarts a trial whose worker died (FailureConfig.max_failures): its students
            # continue from their checkpoints in the trial folder; the run row says so.
            rec = self._recorder(trial)
            message = "its Ray worker died; Tune runs the trial again from its students' checkpoints"
            if rec is not None:
                rec(Event("info", "trial", message=message))
            ctx.events.emit(Event("info", "sweep", message=f"trial {trial.config.get(TRIAL_KEY)}: {message}"))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            result = trial.last_result or {}
            if result.get(FINAL):
                self._finish(trial, RunStatus.DONE, results=result.get(RESULTS))
            elif ctx.cancel.cancelled:
                self._finish(trial, RunStatus.INTERRUPTED if ctx.cancel.shutdown else RunStatus.CANCELLED)
            else:
                self._finish(trial, RunStatus.PRUNED)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._finish(trial, RunStatus.FAILED, error=f"the Ray trial failed; see {trial.local_path}")

        def close_open(self, status: RunStatus) -> None:
            """Run rows of trials Tune left without a complete (it stops them when the experiment ends)."""
            for trial_id in list(self.recorders):
                self._end(trial_id, status)

        def _finish(self, trial, status: RunStatus, *, results: str | None = None, error: str | None = None) -> None:
            if self._recorder(trial) is not None:
                self._end(trial.trial_id, status, results=results, error=error)

        def _end(self, trial_id: str, status: RunStatus, *, results: str | None = None,
                 error: str | None = None) -> None:
            rec = self.recorders.pop(trial_id)
            rec.close()
            ctx.heartbeat.discard(rec.run_id)
            ctx.store.finish_run(rec.run_id, status, error=error,
                                 results=json.loads(results) if results is not None else None)

        def __reduce__(self):
            return _Detached, ("TrialRecorder",)

    return TrialRecorder()


def run_in_ray(ctx: SweepContext, study: optuna.Study) -> None:
    """Run the rest of `ctx`'s budget as Ray Tune trials; returns when Tune is done.

    Raises Cancelled when the search's token was cancelled, KdlabError when Ray cannot start.
    """
    ray = require_ray()
    from ray import tune

    from core.search.budget import spent, trial_statuses

    spec = ctx.spec
    address = cluster_address(spec.ray_address)
    check_address(address)
    # Tune's own result loggers would write every report (events, results.json) again; kdlab's
    # store and folders are the record. Its SIGINT handler only works in the main thread.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0: no tables on stdout
    # ...and so the result grid Tune builds at the end finds no result files: its warning says nothing.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # per-epoch reports carry val_acc only
    if threading.current_thread() is not threading.main_thread():
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
        except Exception as err:  # noqa: BLE001 - Ray's own error types vary by version; the message says it
            raise KdlabError("--ray-address" if address else "--executor",
                             f"Ray did not start ({'cluster ' + address if address else 'local'}): {err}",
                             "check the cluster (`ray status`), or use --executor processes") from err
    where = f"Ray cluster {address}" if address else f"a local Ray ({os.cpu_count()} CPUs)"
    remaining = spec.trials - spent(study, trial_statuses(ctx))
    threads = threads_per_worker(spec.workers)
    gpus = spec.gpus_per_trial  # e.g. 0.25: four small students share one GPU
    ctx.events.emit(Event("stage", "sweep", message=f"{remaining} trial(s) on {where}, {spec.workers} at once, "
                          f"{threads} CPU(s) each", metrics={"workers": spec.workers}))
    payload = RayPayload(base=ctx.prep.cfg.to_dict(), spec=spec.model_dump(mode="json"), out=str(ctx.out),
                         sweep_id=ctx.sweep_id, study_name=ctx.study_name, source=ctx.source, threads=threads,
                         shared=shared_with_workers(ctx))
    trainable = tune.with_resources(tune.with_parameters(kdlab_trial, payload=payload),
                                    {"cpu": threads, "gpu": gpus})
    scheduler = _scheduler(spec)
    searcher = _make_searcher(ctx, study)
    recorder = _make_recorder(ctx)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=max(remaining, 0),
                                    reuse_actors=True),  # a worker process keeps its restored teachers
        run_config=tune.RunConfig(name=ctx.study_name, storage_path=str(ctx.out / "ray"), verbose=0,
                                  callbacks=[recorder], stop=_cancel_stopper(ctx),
                                  failure_config=tune.FailureConfig(max_failures=1)))
    try:
        if remaining > 0:
            tuner.fit()
    finally:
        stopped = RunStatus.INTERRUPTED if ctx.cancel.shutdown or not ctx.cancel.cancelled else RunStatus.CANCELLED
        searcher.fail_live()
        recorder.close_open(stopped)
        if started_here:
            ray.shutdown()
    if ctx.cancel.cancelled:
        raise Cancelled("cancelled")


def _scheduler(spec):
    """Tune's pruning for spec.prune on the first KD student's val accuracy per epoch (`training_iteration`)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    if spec.prune == "asha":  # as make_pruner's SuccessiveHalvingPruner: min resource 1 epoch, reduction 3
        return ASHAScheduler(metric="val_acc", mode="max", grace_period=1, reduction_factor=3,
                             max_t=10_000)
    if spec.prune == "median":  # as make_pruner's MedianPruner: after two trials, from the second epoch
        return MedianStoppingRule(metric="val_acc", mode="max", grace_period=2, min_samples_required=2)
    return FIFOScheduler()


def _cancel_stopper(ctx: SweepContext):
    """Tune stopper: every trial stops when the search's token is cancelled (Cancel, app shutdown)."""
    from ray.tune import Stopper

    class CancelStopper(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return ctx.cancel.cancelled

        def stop_all(self) -> bool:
            return ctx.cancel.cancelled

        def __reduce__(self):
            return _Detached, ("CancelStopper",)

    return CancelStopper()
