"""A sweep's grid: its axes, its points as validated configs, and what it will train.

Light on purpose (configs only, no torch): the job manager checks a sweep with it before queueing,
and pages read it without loading the engine. `core.sweep` trains the grid.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core import config as config_mod
from core.config import RunConfig
from core.errors import ConfigError, OutputError

log = logging.getLogger(__name__)

# Axes a sweep may vary: they change the students only, so the teachers and their cache stay valid.
SWEEPABLE_PREFIXES = ("distill.", "student.")
SWEEPABLE_FIELDS = ("ensemble.scheme",)
# The axes offered by name on the dashboard (any distill.* or student.* field may be swept).
COMMON_AXES = ("distill.temperature", "distill.alpha", "distill.loss", "distill.teaching", "student.lr",
               "student.epochs", "student.width", "student.depth", "student.model", "ensemble.scheme")


@dataclass(frozen=True)
class Axis:
    """One swept field and the values it takes."""

    field: str
    values: tuple[Any, ...]
    dropped: tuple[Any, ...] = ()  # values given more than once, trained once

    def warning(self) -> str | None:
        """What was dropped, in words, or None."""
        if not self.dropped:
            return None
        shown = ", ".join(str(v) for v in self.dropped)
        return f"--grid {self.field}: {shown} given more than once; each value is trained once"


def check_axis_field(name: str) -> None:
    """Refuse, naming the field, what a sweep cannot vary (it would retrain the teachers, or is the seeds)."""
    if not (name.startswith(SWEEPABLE_PREFIXES) or name in SWEEPABLE_FIELDS):
        raise ConfigError(name, "a sweep varies the students only (distill.*, student.*, ensemble.scheme); "
                          "other fields would retrain the teachers",
                          "sweep it with separate `kdlab run`s, or fix it with --set")
    if name in ("distill.rounds", "student.seeds"):
        raise ConfigError(name, "cannot be a sweep axis (a trial trains one distillation round per seed)",
                          "use --seeds for the seeds; compare rounds with `kdlab run`")


def parse_axis(text: str) -> Axis:
    """`distill.temperature=1,2,4` -> Axis; values are YAML scalars, as with `--set`."""
    if "=" not in text:
        raise ConfigError("--grid", f"'{text}' is not field=value,value",
                          "write e.g. --grid distill.temperature=1,2,4")
    name, values = (part.strip() for part in text.split("=", 1))
    check_axis_field(name)
    parsed = [config_mod.parse_value(v.strip()) for v in values.split(",") if v.strip()]
    if not parsed:
        raise ConfigError(name, "the axis has no values", f"write e.g. --grid {name}=1,2")
    unique: list[Any] = []
    dropped: list[Any] = []
    seen: set[str] = set()
    for value in parsed:  # 2 and 2.0 (the same config) are one value; 1 and true are not
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        key = repr(float(value)) if number else json.dumps(value, sort_keys=True)
        (dropped if key in seen else unique).append(value)
        seen.add(key)
    axis = Axis(name, tuple(unique), tuple(dropped))
    if axis.dropped:
        log.warning(axis.warning())
    return axis


def grid_points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, as field -> value dicts (the first axis varies slowest)."""
    names = [a.field for a in axes]
    if len(set(names)) != len(names):
        raise ConfigError("--grid", f"an axis is given twice: {names}", "give each field once")
    return [dict(zip(names, combo)) for combo in itertools.product(*(a.values for a in axes))]


def point_config(base: RunConfig, point: dict[str, Any], seeds: int | None = None) -> RunConfig:
    """The base config with one grid point (and the sweep's seed count) applied, validated."""
    raw = copy.deepcopy(base.to_dict())
    for name, value in point.items():
        config_mod.set_field(raw, name, value)
    if seeds is not None:
        config_mod.set_field(raw, "student.seeds", seeds)
    problems = config_mod.problems(raw)
    if problems:
        name, message = next(iter(problems.items()))
        raise ConfigError(name, f"{message} (grid point {point_label(point)})", "change the --grid values")
    return config_mod.validate(raw)


def point_label(point: dict[str, Any]) -> str:
    """`distill.temperature=2 student.lr=0.01`; a sampled float shows 4 significant digits (0.03068)."""
    def text(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={text(v)}" for k, v in point.items()) or "(base config)"


def check_grid(base: RunConfig, axes: list[Axis], seeds: int | None = None) -> int:
    """Validate every point of the grid (ConfigError naming the field); returns the number of points."""
    if not axes:
        raise ConfigError("--grid", "a sweep needs at least one axis", "add e.g. distill.temperature=1,2,4")
    for axis in axes:  # the CLI's --grid checks, for axes built in code or read from a folder
        check_axis_field(axis.field)
    points = grid_points(axes)
    for point in points:
        point_config(base, point, seeds)
    return len(points)


def scratch_setting(cfg: RunConfig, with_views: bool) -> tuple[Any, ...]:
    """What a scratch student depends on: its own settings, and whether it is shown named views.

    Points that agree on it share their scratch students.
    """
    return (cfg.student.model_dump(exclude={"seeds"}), with_views, cfg.train.model_dump(),
            config_mod.section_identity(cfg.data, "data"),
            cfg.seed)


def sweep_trainings(base: RunConfig, axes: list[Axis], seeds: int | None = None) -> int:
    """Trainings a sweep does from nothing: teacher draws, a KD student per point and seed, and the
    scratch students, trained once per distinct student setting (and teaching with or without views)."""
    teachers = sum(t.seeds for t in base.teachers)
    kd = 0
    scratch: dict[str, int] = {}
    for point in grid_points(axes):
        cfg = point_config(base, point, seeds)
        kd += cfg.student.seeds
        key = json.dumps(scratch_setting(cfg, cfg.distill.teaching == "views"), sort_keys=True, default=str)
        scratch[key] = max(scratch.get(key, 0), cfg.student.seeds)
    return teachers + kd + sum(scratch.values())


def read_sweep_spec(folder: Path) -> tuple[RunConfig, list[Axis], int | None]:
    """(base config, axes, seeds) of a sweep folder, to run it again where it stopped.

    The seed count is the one its finished points used; None (the base config's) if none finished.
    """
    folder = Path(folder)
    try:
        base = config_mod.validate(yaml.safe_load((folder / "config.yaml").read_text()))
        axes_doc = yaml.safe_load((folder / "sweep.yaml").read_text())
        rows_file = folder / "sweep.json"
        rows = json.loads(rows_file.read_text())["rows"] if rows_file.is_file() else []
    except (OSError, ValueError, KeyError, yaml.YAMLError) as err:
        raise OutputError("sweep folder", f"'{folder}' is not a readable sweep ({type(err).__name__})",
                          "start a new sweep instead") from None
    axes = [Axis(name, tuple(values)) for name, values in axes_doc.items()]
    seeds = max((r["seeds"] for r in rows), default=None)
    return base, axes, seeds
