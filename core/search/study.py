"""The Optuna side of a search: storage, sampler, pruner, the study itself and its trials' states.

A store's studies live in `<data_dir>/optuna.db`, Optuna's own RDB storage (SQLAlchemy over
SQLite), so `optuna-dashboard sqlite:///<data_dir>/optuna.db` opens every search of the store.
kdlab's run store stays the record of what trained; the study is what the sampler learns from.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from core.errors import ConfigError
from core.search.space import grid_search_space
from core.search.spec import SearchSpec

log = logging.getLogger(__name__)

OPTUNA_DB = "optuna.db"
SPACE_ATTR = "kdlab_space_key"  # study user attribute: what the study is about (SearchSpec.space_key)


def storage_url(data_dir: Path) -> str:
    """Optuna's storage URL for a run store's folder (an absolute sqlite path)."""
    return f"sqlite:///{(Path(data_dir) / OPTUNA_DB).absolute()}"


def sampler_seed(spec: SearchSpec, *, worker: int = 0, resumed_at: int = 0) -> int:
    """The seed of one sampler of a study: `spec.sampler_seed`, or a stream of its own for a worker
    process (`worker` 1..K) or for a study resumed after `resumed_at` trials.

    Optuna keeps no sampler state in its storage: a Random, TPE or NSGA-II sampler made again with
    the same seed replays its stream from the start, so two workers, or a resumed search, would
    propose the points already tried. GridSampler is the other way round: its seed shuffles the grid
    that grid ids index, so every sampler of a grid study shares it (Optuna's docs say so).
    """
    if spec.search == "grid" or (worker == 0 and resumed_at == 0):
        return spec.sampler_seed
    return int(np.random.SeedSequence([spec.sampler_seed, worker, resumed_at]).generate_state(1)[0])


def make_sampler(spec: SearchSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """Optuna's sampler for `spec.search`, seeded with `seed` (default `spec.sampler_seed`)."""
    seed = spec.sampler_seed if seed is None else seed
    if spec.search == "grid":
        return optuna.samplers.GridSampler(grid_search_space(spec.dimensions), seed=seed)
    if spec.search == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.search == "nsga2":
        # Small budgets: a generation of 4 lets NSGA-II evolve within a dozen trials (default 50).
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, min(50, spec.trials // 3)))
    # TPE: a few random start-up trials (default 10 would be a whole budget here), multivariate so
    # that interacting fields (temperature and alpha) are modelled together.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, spec.trials // 3)),
                                      multivariate=True)


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    """Optuna's pruner for `spec.prune`; steps are the first student's epochs (1, 2, ...)."""
    if spec.prune == "median":
        # Stop a trial below the median of earlier trials at the same epoch, once two have finished
        # and after its first epoch (the first epoch's val accuracy says little).
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if spec.prune == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(spec: SearchSpec, storage: str, name: str) -> optuna.Study:
    """Create the study, or load it when it exists; a study of that name about another space is refused."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdlab reports trials itself
    key = spec.space_key()
    try:
        existing = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no study of that name yet
        existing = None
    if existing is not None:
        found = existing.user_attrs.get(SPACE_ATTR)
        if found != key:
            raise ConfigError("--study", f"a study named '{name}' exists with another space, objectives or seeds",
                              "give another --study name (or another --out folder), or repeat that study's "
                              "--space/--objective/--seeds")
    resumed_at = len(existing.get_trials(deepcopy=False)) if existing is not None else 0
    sampler = make_sampler(spec, sampler_seed(spec, resumed_at=resumed_at))
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                pruner=make_pruner(spec), directions=spec.directions, load_if_exists=True)
    if existing is None:
        study.set_user_attr(SPACE_ATTR, key)
        study.set_user_attr("kdlab_spec", spec.model_dump(mode="json"))
        with warnings.catch_warnings():  # experimental in Optuna, and stable in what it stores: a user attr
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(spec.objectives))  # optuna-dashboard and Optuna's plots name the axes
    return study


def study_exists(storage: str, name: str) -> bool:
    try:
        optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return False
    return True


def trial_state_name(state: optuna.trial.TrialState) -> str:
    """Optuna's trial state in kdlab's words (the Search page colours by it)."""
    return {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
            "WAITING": "waiting"}[state.name]


def distributions(spec: SearchSpec) -> dict[str, Any]:
    """The study's distributions by field (what `study.ask` samples)."""
    return {d.field: d.distribution() for d in spec.dimensions}
