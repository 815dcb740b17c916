"""A search's budget: which trials spent it, which a kill or a cancel stopped, and their retries.

The run store is the record of what trained: a trial whose run row was stopped (cancelled,
interrupted, or never made) does not spend the budget and is retried once with the same values and
run row; one whose row ended on its own (done, pruned, failed) spends it.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from core.lifecycle import RunStatus
from core.search.trial import SweepContext

log = logging.getLogger(__name__)

RUN_ATTR = "run_id"  # Optuna user attribute: the trial's run row


def tell(study: optuna.Study, trial: optuna.Trial | int, **kwargs) -> None:
    """study.tell, where GridSampler's end of grid does not break the ask-and-tell loop.

    After the last grid point GridSampler calls `study.stop()`, which raises RuntimeError outside
    `study.optimize` (optuna issue #5141, open). The trial's state is written before that (a
    `finally` in Optuna's tell), and this loop stops by its own budget, so the error is dropped.
    """
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as err:
        if not (isinstance(study.sampler, optuna.samplers.GridSampler) and "Study.stop" in str(err)):
            raise
        log.debug("GridSampler reached the end of its grid (%s); the trial is stored", err)


def trial_statuses(ctx: SweepContext) -> dict[str, RunStatus]:
    """The store's status of each of this sweep's trial runs (the record of what trained)."""
    return {r.id: r.status for r in ctx.store.trials(ctx.sweep_id)}


STOPPED = (RunStatus.CANCELLED, RunStatus.INTERRUPTED, RunStatus.QUEUED, RunStatus.RUNNING)


def stopped(trial: optuna.trial.FrozenTrial, statuses: dict[str, RunStatus]) -> bool:
    """A FAIL that a kill or a cancel caused (its run row was stopped, or never made): retried, not counted.

    Any other end of its run row (failed, done, pruned) spends the budget, so the loop always ends.
    """
    if trial.state != TrialState.FAIL:
        return False
    status = statuses.get(trial.user_attrs.get(RUN_ATTR, ""))
    return status is None or status in STOPPED


def spent(study: optuna.Study, statuses: dict[str, RunStatus]) -> int:
    """Trials that spent the budget: finished, pruned, or failed on their own (a retried one counts once, as its retry)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
               (t.state == TrialState.FAIL and not stopped(t, statuses) and t.number not in retried) for t in trials)


def retry_stopped(ctx: SweepContext, study: optuna.Study, *, dead_only: bool = False) -> int:
    """Queue once more, with the same values, every trial of this study a kill or a cancel stopped.

    A trial still RUNNING in the study belongs to a process that is gone: at the start of a search
    every one does (the sweep row was not active, or it would not have been resumed); while worker
    processes run (`dead_only`), only those whose run row the store reaped as interrupted. It is
    failed first; its run row is kept and continues from its students' checkpoints.
    """
    if dead_only:
        ctx.store.reap()
    statuses = trial_statuses(ctx)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not dead_only or statuses.get(t.user_attrs.get(RUN_ATTR, "")) in (RunStatus.INTERRUPTED,
                                                                              RunStatus.CANCELLED):
            tell(study, t.number, state=TrialState.FAIL, skip_if_finished=True)
    statuses = trial_statuses(ctx)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    queued = 0
    for t in trials:
        if stopped(t, statuses) and t.number not in retried and RUN_ATTR in t.user_attrs:
            study.enqueue_trial(dict(t.params), user_attrs={RUN_ATTR: t.user_attrs[RUN_ATTR], "retry_of": t.number})
            queued += 1
    return queued
