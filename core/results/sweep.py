"""A student sweep's results (sweep.json): one typed row per grid point, and its reader.

A row holds the point's swept values under their field names (e.g. `distill.temperature`), next to
the typed scores; the file says which fields are the axes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import OutputError
from core.results.entries import Entry

SCORE_COLUMNS = ("point", "kd_val_acc", "kd_val_nll", "kd_test_acc_mean", "kd_test_acc_std", "kd_test_nll_mean",
                 "scratch_test_acc_mean", "scratch_test_acc_std", "paired_gain_mean", "paired_gain_std",
                 "ensemble_test_acc", "gain_recovery", "gain_recovery_per_seed_mean",
                 "gain_recovery_per_seed_std", "seeds", "kd_train_seconds")


class SweepRow(BaseModel):
    """One grid point: its label, KD val scores (the pick's criterion), test scores and gain recovery.

    The swept values are extra fields named by their config field, e.g. `row.value("distill.alpha")`.
    """

    model_config = ConfigDict(extra="allow")

    point: str
    kd_val_acc: float | None
    kd_val_nll: float | None
    kd_test_acc_mean: float
    kd_test_acc_std: float
    kd_test_nll_mean: float
    scratch_test_acc_mean: float
    scratch_test_acc_std: float
    paired_gain_mean: float                     # KD - scratch, paired by seed
    paired_gain_std: float
    ensemble_test_acc: float                    # the point's target ensemble
    gain_recovery: float | None                 # of the means
    gain_recovery_per_seed_mean: float | None
    gain_recovery_per_seed_std: float | None
    seeds: int
    kd_train_seconds: float                     # mean over seeds
    # Searches (absent in sweeps written before searches were store rows):
    trial: int | None = None                    # Optuna trial number
    run_id: str | None = None                   # the trial's run in the store
    folder: str | None = None                   # the trial's folder, relative to the sweep folder
    kd_val_acc_std: float | None = None         # spread of the val accuracy over seeds
    latency_ms: float | None = None             # the student's batch-1 forward (median)
    student_params: int | None = None

    def value(self, field: str) -> Any:
        """The point's value of a swept config field."""
        return (self.model_extra or {})[field]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# 'repeat': a proposal of a point that had finished, told that trial's result (nothing trained).
TrialState = Literal["finished", "pruned", "failed", "running", "waiting", "cancelled", "interrupted", "repeat"]


class TrialSummary(Entry):
    """One trial of a search, whatever became of it (a pruned trial has no row, only this)."""

    model_config = ConfigDict(extra="forbid")

    number: int                                 # Optuna trial number
    state: TrialState
    run_id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)   # field -> value
    values: dict[str, float] | None = None      # objective -> value, for finished trials
    val_acc_std: float | None = None            # spread of the val accuracy over seeds
    epochs: int = 0                             # student epochs trained (all seeds, KD and scratch)
    last_step: int | None = None                # the last epoch reported to the pruner
    pareto: bool = False                        # non-dominated among finished trials (multi-objective)


class SweepFile(Entry):
    """sweep.json: the axes (field names), the rows of finished points, the picked row, the warnings.

    A search adds its spec, every trial (pruned and failed ones too), its pick rule and the Pareto set.
    """

    axes: list[str]
    best: int | None
    rows: list[SweepRow]
    warnings: list[str] = Field(default_factory=list)
    search: dict[str, Any] | None = None        # core.search.SearchSpec as JSON
    trials: list[TrialSummary] = Field(default_factory=list)
    pick_rule: str | None = None
    best_trial: int | None = None               # number of the picked trial
    sweep_id: str | None = None                 # its row in the run store

    @model_validator(mode="after")
    def _check(self) -> "SweepFile":
        for i, r in enumerate(self.rows):
            missing = [a for a in self.axes if a not in (r.model_extra or {})]
            if missing:
                raise ValueError(f"rows.{i} has no value for the axis {', '.join(missing)}")
        if self.best is not None and not 0 <= self.best < len(self.rows):
            raise ValueError(f"best is {self.best}, but there are {len(self.rows)} row(s)")
        return self

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def read_sweep_file(data: Mapping[str, Any] | Path) -> SweepFile:
    """Validate a sweep.json (a path or its parsed data); OutputError names the first bad field."""
    where = str(data) if isinstance(data, Path) else "sweep.json"
    if isinstance(data, Path):
        try:
            data = json.loads(data.read_text())
        except OSError as err:
            raise OutputError(where, f"cannot be read ({err.strerror or err})", "check the sweep folder") from None
        except ValueError as err:
            raise OutputError(where, f"is not valid JSON ({err})",
                              "run the sweep again with the same --out to rewrite it") from None
    if not isinstance(data, Mapping):
        raise OutputError(where, f"holds a {type(data).__name__}, not a mapping with axes and rows",
                          "run the sweep again with the same --out to rewrite it")
    try:
        return SweepFile.model_validate(dict(data))
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "sweep.json"
        raise OutputError(where, f"is not a valid kdlab sweep ({loc}: {first['msg']})",
                          "run the sweep again with the same --out to rewrite it") from None
