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
REPEAT_ATTR = "repeat_of"  # Optuna user attribute: the earlier trial whose point (and result) this one repeats
# A sampler that proposes only finished points this many times in a row has nothing new left to try
# (TPE on a small categorical space converges); the search ends rather than asking forever.
MAX_REPEATS_IN_A_ROW = 50


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
    """Trials that spent the budget: finished, pruned, or failed on their own (a retried one counts once,
    as its retry); a repeat of a finished point trains nothing and spends nothing."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return sum(REPEAT_ATTR not in t.user_attrs and (
        t.state in (TrialState.COMPLETE, TrialState.PRUNED) or
        (t.state == TrialState.FAIL and not stopped(t, statuses) and t.number not in retried)) for t in trials)


def finished_point(study: optuna.Study, params: dict) -> optuna.trial.FrozenTrial | None:
    """The earlier finished trial of exactly this point, if any.

    Samplers propose a point again (TPE often does on a categorical space, optuna issue #2021): its
    students are already trained in the point's folder, so training it again would cost nothing but
    would spend a trial of the budget on nothing new. The search tells Optuna the earlier result
    instead (so the sampler still learns from it) and asks again.
    """
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if REPEAT_ATTR not in t.user_attrs and t.params == params:
            return t
    return None


def points_in_space(dims) -> int | None:
    """How many distinct points a space has: a product of choice counts, None with any range."""
    n = 1
    for d in dims:
        if d.choices is None:
            return None
        n *= len(d.choices)
    return n


def exhausted(study: optuna.Study, dims) -> bool:
    """Every point of a finite space has finished: nothing is left to learn from another trial."""
    n = points_in_space(dims)
    if n is None:
        return False
    done = {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return len(done) >= n


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
