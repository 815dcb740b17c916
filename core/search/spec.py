"""What a search is: its algorithm, budget, space, objectives, pruner and pick rule (`SearchSpec`).

Light on purpose (pydantic and the space, no torch, no Optuna import at module level): the CLI,
the job manager and the Setup page check a search with it before anything is stored or trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.config import RunConfig
from core.errors import ConfigError, KdlabError
from core.search.space import Dimension, check_space, grid_search_space, read_space, space_json

SEARCHES = ("grid", "random", "tpe", "nsga2")
PRUNERS = ("none", "median", "asha")
# The accuracy a pick may give up for a faster (or smaller) student: 0.002 is about one val image
# in 500, below the seed-to-seed spread of the small students kdlab trains.
PICK_TOLERANCE = 0.002


@dataclass(frozen=True)
class Objective:
    """One thing a search optimises; `key` is also the column it reads from a trial."""

    key: str
    direction: Literal["maximize", "minimize"]
    unit: str
    help: str


OBJECTIVES: dict[str, Objective] = {o.key: o for o in (
    Objective("val_acc", "maximize", "", "the distilled student's val accuracy, mean over seeds"),
    Objective("latency_ms", "minimize", "ms", "the student's batch-1 forward time on the run's device (median)"),
    Objective("params", "minimize", "", "the student's parameter count"),
)}


def parse_objectives(text: str | list[str]) -> list[str]:
    """`val_acc,latency_ms` -> ['val_acc', 'latency_ms']; val accuracy must be one of them (the pick reads it)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ConfigError("--objective", "no objective given", "write e.g. --objective val_acc,latency_ms")
    for name in names:
        if name not in OBJECTIVES:
            raise ConfigError("--objective", f"unknown objective '{name}'",
                              f"use any of: {', '.join(OBJECTIVES)} (comma-separated)")
    if len(set(names)) != len(names):
        raise ConfigError("--objective", f"an objective is given twice: {','.join(names)}", "give each once")
    if "val_acc" not in names:
        raise ConfigError("--objective", "val_acc is missing: every search keeps the most accurate students "
                          "in view and picks by val accuracy", f"write --objective val_acc,{','.join(names)}")
    return names


class SearchSpec(BaseModel):
    """A search over a base config, as stored with its sweep and shown on the Search page."""

    model_config = ConfigDict(extra="forbid")

    search: Literal["grid", "random", "tpe", "nsga2"] = "tpe"
    trials: int = Field(8, ge=1, description="trials to finish (done, pruned or failed), resumed ones included")
    space: list[dict[str, Any]] = Field(default_factory=list)   # Dimension.to_json() each
    objectives: list[str] = Field(default_factory=lambda: ["val_acc"])
    prune: Literal["none", "median", "asha"] = "none"
    seeds: int | None = Field(None, ge=1, description="students per trial; None: the base config's")
    sampler_seed: int = 0
    study: str | None = None                                    # Optuna study name; None: the sweep's id
    pick_tolerance: float = Field(PICK_TOLERANCE, ge=0.0, le=1.0)
    executor: Literal["local", "processes", "ray"] = "local"   # where trials run (not part of the study)
    workers: int = Field(1, ge=1, le=64, description="trials at once: worker processes, or Ray trials in flight")
    ray_address: str | None = None                              # an existing Ray cluster; None: RAY_ADDRESS or a local Ray
    # A Ray trial's share of a GPU: 0.25 lets four small students share one (Ray's fractional GPUs).
    gpus_per_trial: float = Field(0.0, ge=0.0, le=8.0)

    @property
    def dimensions(self) -> list[Dimension]:
        return read_space(self.space)

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o].direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def space_key(self) -> str:
        """A short hash of what a study is about (space, objectives, algorithm, seeds): a rerun must match it."""
        doc = {"space": self.space, "objectives": self.objectives, "search": self.search, "seeds": self.seeds}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def pick_rule(self) -> str:
        """The pick rule in words, as the CLI and the Search page state it."""
        if not self.multi_objective:
            return "the best val accuracy (ties: the lower val NLL, then the first row)"
        other = self.objectives[1] if self.objectives[0] == "val_acc" else self.objectives[0]
        word = {"latency_ms": "fastest", "params": "smallest"}[other]
        return (f"the {word} trial ({other}) within {self.pick_tolerance:g} val accuracy of the best; test "
                "accuracy is never used to choose")

    def command_args(self) -> list[str]:
        """The `kdlab sweep` arguments that give this search (the Setup page shows the command)."""
        args = ["--search", self.search, "--trials", str(self.trials)]
        for dim in self.dimensions:
            args += ["--space", dim.text()]
        args += ["--objective", ",".join(self.objectives)]
        if self.prune != "none":
            args += ["--prune", self.prune]
        if self.seeds is not None:
            args += ["--seeds", str(self.seeds)]
        args += ["--sampler-seed", str(self.sampler_seed)]
        if self.study:
            args += ["--study", self.study]
        if self.executor != "local":
            args += ["--executor", self.executor, "--workers", str(self.workers)]
        if self.ray_address:
            args += ["--ray-address", self.ray_address]
        if self.gpus_per_trial:
            args += ["--gpus-per-trial", f"{self.gpus_per_trial:g}"]
        return args


def make_spec(base: RunConfig, *, search: str, space: list[Dimension], trials: int | None = None,
              objectives: str | list[str] = "val_acc", prune: str = "none", seeds: int | None = None,
              sampler_seed: int = 0, study: str | None = None, executor: str = "local",
              workers: int | None = None, ray_address: str | None = None,
              gpus_per_trial: float = 0.0) -> SearchSpec:
    """A checked SearchSpec: every bad input is a ConfigError naming the option and the fix."""
    if search not in SEARCHES:
        raise ConfigError("--search", f"unknown search '{search}'", f"use one of: {', '.join(SEARCHES)}")
    if prune not in PRUNERS:
        raise ConfigError("--prune", f"unknown pruner '{prune}'", f"use one of: {', '.join(PRUNERS)}")
    names = parse_objectives(objectives)
    check_space(base, space)
    if search == "grid":
        grid = grid_search_space(space)
        size = 1
        for values in grid.values():
            size *= len(values)
        if trials is None:
            trials = size
        elif trials > size:
            raise ConfigError("--trials", f"{trials} is more than the grid's {size} point(s)",
                              f"use --trials {size} or fewer, or another --search")
    if trials is None:
        raise ConfigError("--trials", "a search needs a budget", "add e.g. --trials 12")
    if trials < 1:
        raise ConfigError("--trials", f"must be at least 1, got {trials}", "add e.g. --trials 12")
    if prune != "none" and len(names) > 1:
        raise ConfigError("--prune", "pruning compares one value per epoch, and a multi-objective search has "
                          "several (Optuna does not prune those)", "drop --prune, or search --objective val_acc")
    if search == "nsga2" and len(names) == 1:
        raise ConfigError("--search", "nsga2 is a multi-objective algorithm",
                          "add an objective (--objective val_acc,latency_ms) or use --search tpe")
    if seeds is not None and seeds < 1:
        raise ConfigError("--seeds", f"must be at least 1, got {seeds}", "use --seeds 1 or more")
    if study is not None and not study.strip():
        raise ConfigError("--study", "the study name is empty", "give a name, or leave --study out")
    workers = check_executor(executor, workers)
    if executor == "ray":  # a dead cluster address is refused in seconds, before anything is stored
        from core.search.ray_executor import check_address, cluster_address
        check_address(cluster_address(ray_address))
    if ray_address is not None and executor != "ray":
        raise ConfigError("--ray-address", "a Ray address is only used by --executor ray", "add --executor ray")
    if gpus_per_trial and executor != "ray":
        raise ConfigError("--gpus-per-trial", "a GPU share is only used by --executor ray",
                          "add --executor ray (processes and local use the config's device)")
    if not 0.0 <= gpus_per_trial <= 8.0 or (gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial)):
        raise ConfigError("--gpus-per-trial", f"{gpus_per_trial:g} is not a GPU share Ray can give",
                          "use a fraction up to 1 (e.g. 0.25: four trials a GPU) or a whole number of GPUs")
    return SearchSpec(search=search, trials=trials, space=space_json(space), objectives=names, prune=prune,
                      seeds=seeds, sampler_seed=sampler_seed, study=study, executor=executor, workers=workers,
                      ray_address=ray_address, gpus_per_trial=gpus_per_trial)


EXECUTORS = ("local", "processes", "ray")


def check_executor(executor: str, workers: int | None) -> int:
    """The worker count for `executor` (ConfigError on bad input); more workers than cores is warned, allowed."""
    import logging
    import os

    if executor not in EXECUTORS:
        raise ConfigError("--executor", f"unknown executor '{executor}'", f"use one of: {', '.join(EXECUTORS)}")
    if executor == "ray":
        import importlib.util

        try:  # without importing it (seconds): only whether it is there
            found = importlib.util.find_spec("ray") is not None
        except (ImportError, ValueError):  # an import hook refused it, or a broken install left no spec
            found = False
        if not found:
            raise ConfigError("--executor", "ray is not installed (it is an optional extra)",
                              "pip install 'kdlab[ray]', or use --executor processes")
    if executor == "local":
        if workers not in (None, 1):
            raise ConfigError("--workers", "the local executor runs one trial at a time",
                              "add --executor processes, or drop --workers")
        return 1
    cores = os.cpu_count() or 1
    workers = cores if workers is None else workers
    if workers < 1:
        raise ConfigError("--workers", f"must be at least 1, got {workers}", "use --workers 2 or more")
    if workers > cores and executor == "ray":
        logging.getLogger(__name__).warning(
            "--workers %d is more than this machine's %d cores: on a local Ray at most %d trials run at once "
            "(1 CPU each); a cluster has cores of its own", workers, cores, cores)
    if workers > cores and executor == "processes":
        logging.getLogger(__name__).warning(
            "--workers %d is more than this machine's %d cores: the trials will share them (each worker gets "
            "1 torch thread)", workers, cores)
    return workers


def read_search_folder(folder: Path) -> tuple[RunConfig, SearchSpec] | None:
    """(base config, spec) of a sweep folder written by a search (its config.yaml and search.json).

    None for a folder without search.json (a grid from before sweeps were store rows: see
    core.sweep_grid.read_sweep_spec); OutputError naming the folder when either file is unreadable.
    """
    import yaml
    from pydantic import ValidationError

    from core import config as config_mod
    from core.errors import OutputError

    folder = Path(folder)
    if not (folder / "search.json").is_file():
        return None
    try:
        spec = SearchSpec.model_validate_json((folder / "search.json").read_text())
        base = config_mod.validate(yaml.safe_load((folder / "config.yaml").read_text()))
    except (OSError, ValueError, ValidationError, yaml.YAMLError, KdlabError) as err:
        raise OutputError("sweep folder", f"'{folder}' has an unreadable search.json or config.yaml "
                          f"({type(err).__name__})", "start a new sweep instead") from None
    return base, spec
