"""A search's space: one `Dimension` per `--space` text, checked against the base config.

    distill.temperature=1..8:log   a float range, sampled on a log scale
    student.epochs=5..20           an int range (the field is an int)
    distill.loss=hinton,dkd        listed choices (YAML scalars, as --set and --grid read them)

Light on purpose (configs only; Optuna is imported by `Dimension.distribution` alone): the CLI,
the job manager and the Setup page check a space before anything is stored or trained. A
dimension's `field` is the dotted config path and also its Optuna parameter name.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from core import config as config_mod
from core.config import RunConfig
from core.config_fields import FieldSpec, spec_for_path
from core.errors import ConfigError
from core.sweep_grid import Axis, check_axis_field, point_config

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

KINDS = ("float", "int", "categorical")
EXAMPLE = "--space distill.temperature=1..8:log"


def _number_text(value: Any) -> str:
    """A range end or a numeric choice as the CLI writes it: 8.0 -> '8', 0.0001 -> '0.0001', 1e-05."""
    text = repr(value)
    return text[:-2] if isinstance(value, float) and text.endswith(".0") else text


def _value_text(value: Any) -> str:
    """A choice as the CLI writes it, so that `parse_value` reads the same value back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _number_text(value)
    text = str(value)
    return text if config_mod.parse_value(text) == value else json.dumps(text)  # '1', 'true' as strings


@dataclass(frozen=True)
class Dimension:
    """One searched field: a numeric range (kind float/int) or listed choices (kind categorical)."""

    field: str                              # dotted config path, also the Optuna parameter name
    kind: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        # The shape only (a range has ends, choices have values); what the field accepts is check_space's.
        if self.kind not in KINDS:
            raise ConfigError(self.field, f"unknown dimension kind '{self.kind}'", f"use one of: {', '.join(KINDS)}")
        if self.kind == "categorical":
            if not self.choices or self.low is not None or self.high is not None or self.log:
                raise ConfigError(self.field, "a categorical dimension needs choices and no range",
                                  f"write --space {self.field}=a,b,c")
        elif self.low is None or self.high is None or self.choices is not None:
            raise ConfigError(self.field, f"a {self.kind} dimension needs LOW and HIGH and no choices",
                              f"write --space {self.field}=LOW..HIGH")

    def distribution(self) -> "optuna.distributions.BaseDistribution":
        """The Optuna distribution that samples this dimension."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices or ()))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return FloatDistribution(float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]

    def text(self) -> str:
        """Back to the CLI form, e.g. 'distill.temperature=1..8:log' (parse_dimension reads it back)."""
        if self.kind == "categorical":
            return f"{self.field}={','.join(_value_text(v) for v in self.choices or ())}"
        suffix = ":log" if self.log else ""
        return f"{self.field}={_number_text(self.low)}..{_number_text(self.high)}{suffix}"

    def values_to_check(self) -> tuple[Any, ...]:
        """The values that stand for the whole dimension in a check: every choice, or both ends."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def to_json(self) -> dict[str, Any]:
        """A plain dict (stored with the sweep; its exact form is part of a study's key, so keep it stable)."""
        if self.kind == "categorical":
            return {"field": self.field, "kind": self.kind, "choices": list(self.choices or ())}
        return {"field": self.field, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Dimension":
        """A dimension written by `to_json`; a malformed entry is a ConfigError naming its field."""
        if not isinstance(d, dict) or not isinstance(d.get("field"), str):
            raise ConfigError("--space", f"a stored dimension {d!r} has no field",
                              "start the search again with its --space options")
        extra = set(d) - {"field", "kind", "low", "high", "log", "choices"}
        if extra:
            raise ConfigError(d["field"], f"a stored dimension has unknown keys {sorted(extra)}",
                              "start the search again with its --space options")
        choices = d.get("choices")
        return cls(d["field"], d.get("kind"), d.get("low"), d.get("high"), bool(d.get("log", False)),
                   tuple(choices) if isinstance(choices, list) else choices)


def _number(text: str, field: str, spec: FieldSpec, raw: str) -> float | int:
    """A range end: an int for an int field, else a float; 1e-3 is a number here (YAML reads a string)."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(field, f"'{text}' in --space {raw} is not a number",
                          f"write numbers, e.g. --space {field}=1..8") from None
    if not math.isfinite(value):
        raise ConfigError(field, f"'{text}' in --space {raw} is not a finite number",
                          f"write finite numbers, e.g. --space {field}=1..8")
    if spec.kind is int:
        if not value.is_integer():
            raise ConfigError(field, f"is an integer field, and '{text}' in --space {raw} is not an integer",
                              f"write integers, e.g. --space {field}=2..10")
        return int(value)
    return value


def _unique(values: list[Any]) -> list[Any]:
    """The values in order, each once: 2 and 2.0 (the same config) are one value; 1 and true are not."""
    unique: list[Any] = []
    seen: set[str] = set()
    for value in values:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        key = repr(float(value)) if number else json.dumps(value, sort_keys=True, default=str)
        if key not in seen:
            unique.append(value)
        seen.add(key)
    return unique


def parse_dimension(text: str) -> Dimension:
    """`FIELD=LOW..HIGH[:log]` or `FIELD=a,b,c` -> Dimension; ConfigError naming the field and the fix."""
    if "=" not in text:
        raise ConfigError("--space", f"'{text}' is not FIELD=LOW..HIGH or FIELD=a,b,c", f"write e.g. {EXAMPLE}")
    field, body = (part.strip() for part in text.split("=", 1))
    if not field:
        raise ConfigError("--space", f"'{text}' names no field", f"write e.g. {EXAMPLE}")
    check_axis_field(field)
    spec = spec_for_path(field, registry=False)  # the type is enough here; check_space reads the registries
    if not body:
        raise ConfigError(field, f"--space {text} gives no values", f"write {field}=LOW..HIGH or {field}=a,b,c")
    if ".." not in body:
        values = [config_mod.parse_value(v.strip()) for v in body.split(",") if v.strip()]
        if not values:
            raise ConfigError(field, f"--space {text} gives no values", f"write e.g. --space {field}=a,b")
        unique = _unique(values)
        if len(unique) < len(values):
            log.warning("--space %s: a value is given more than once; each is tried once", text)
        return Dimension(field, "categorical", choices=tuple(unique))
    rng, _, suffix = body.partition(":")
    if suffix.strip() not in ("", "log"):
        raise ConfigError(field, f"unknown suffix ':{suffix.strip()}' in --space {text}",
                          f"write {field}=LOW..HIGH, or {field}=LOW..HIGH:log for a log scale")
    log_scale = suffix.strip() == "log"
    if spec.kind not in (int, float):
        example = _choices_example(spec_for_path(field))  # with a registry's names, read only for the message
        raise ConfigError(field, f"is a {spec.kind.__name__} field: a range (LOW..HIGH) needs a number field",
                          f"list the values instead, e.g. --space {field}={example}")
    low_text, _, high_text = rng.partition("..")
    low, high = (_number(t.strip(), field, spec, text) for t in (low_text, high_text))
    if low > high:
        raise ConfigError(field, f"LOW {_number_text(low)} is above HIGH {_number_text(high)} in --space {text}",
                          f"write --space {field}={_number_text(high)}..{_number_text(low)}")
    if low == high:
        raise ConfigError(field, f"the range {rng.strip()} holds one value", f"list it as one value instead: "
                          f"--space {field}={_number_text(low)}")
    if log_scale and low <= 0:
        start = 1 if spec.kind is int else high / 100
        raise ConfigError(field, f"log scale needs LOW > 0 (got {_number_text(low)} in --space {text})",
                          f"start the range above 0, e.g. --space {field}={_number_text(start)}.."
                          f"{_number_text(high)}:log, or drop :log")
    return Dimension(field, "int" if spec.kind is int else "float", low, high, log=log_scale)


def _choices_example(spec: FieldSpec) -> str:
    return ",".join(str(c) for c in (spec.choices or ())[:3]) or "a,b,c"


def _limits_text(spec: FieldSpec) -> str:
    """The field's interval, e.g. '[0, 1]' or '(0, 100]'."""
    low = f"[{spec.ge:g}" if spec.ge is not None else f"({spec.gt:g}" if spec.gt is not None else "(-inf"
    high = f"{spec.le:g}]" if spec.le is not None else f"{spec.lt:g})" if spec.lt is not None else "inf)"
    return f"{low}, {high}"


def _check_limits(dim: Dimension, spec: FieldSpec) -> None:
    """Both ends of a range inside the pydantic field's limits; the message names the limit it breaks."""
    breaks = []
    for end, value in (("LOW", dim.low), ("HIGH", dim.high)):
        for bound, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                                ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
            limit = getattr(spec, bound)
            if limit is not None and not ok(value, limit):
                breaks.append(f"{end} {_number_text(value)} is not {word} {limit:g}")
    if breaks:
        raise ConfigError(dim.field, f"--space {dim.text()} is outside the field's limits {_limits_text(spec)}: "
                          f"{'; '.join(breaks)}", f"keep the range within {_limits_text(spec)}")


def _check_value(base: RunConfig, dim: Dimension, spec: FieldSpec, value: Any) -> None:
    """One choice (or range end) applied to the base config; its error rephrased to name the --space."""
    what = "the choice" if dim.kind == "categorical" else "the range end"
    if spec.choices is not None and value not in spec.choices and not (value is None and spec.optional):
        raise ConfigError(dim.field, f"{what} {_value_text(value)} in --space {dim.text()} is not a valid "
                          f"{dim.field}", f"use any of: {', '.join(str(c) for c in spec.choices)}")
    try:
        point_config(base, {dim.field: value})
    except ConfigError as err:
        problem = err.problem.rsplit(" (grid point ", 1)[0]  # point_config speaks of --grid points
        where = "" if err.field in ("", dim.field) else f" ({err.field})"
        raise ConfigError(dim.field, f"{what} {_value_text(value)} in --space {dim.text()} is refused{where}: "
                          f"{problem}", f"change the --space {dim.field} values") from None


def check_space(base: RunConfig, dims: list[Dimension]) -> None:
    """Validate the whole space against `base`: fields, kinds, limits, both ends of every range, every choice."""
    if not dims:
        raise ConfigError("--space", "a search needs at least one --space", f"add e.g. {EXAMPLE}")
    seen: set[str] = set()
    for dim in dims:
        if dim.field in seen:
            raise ConfigError(dim.field, "is given twice in --space", "give each field once")
        seen.add(dim.field)
        check_axis_field(dim.field)  # again: a space built in code or read from a stored sweep
        spec = spec_for_path(dim.field)
        if dim.kind != "categorical":
            want = "int" if spec.kind is int else "float" if spec.kind is float else None
            if want is None:
                raise ConfigError(dim.field, f"is a {spec.kind.__name__} field: a range needs a number field",
                                  f"list the values instead, e.g. --space {dim.field}={_choices_example(spec)}")
            if dim.kind != want:
                raise ConfigError(dim.field, f"is a {want} field, not {dim.kind}", f"write --space {dim.text()} "
                                  "again so that the range is read from the field's type")
            if not dim.low < dim.high:  # type: ignore[operator]
                raise ConfigError(dim.field, f"the range {dim.low}..{dim.high} is empty or reversed",
                                  "give LOW < HIGH")
            if dim.log and dim.low <= 0:  # type: ignore[operator]
                raise ConfigError(dim.field, "log scale needs LOW > 0", "start the range above 0, or drop :log")
            _check_limits(dim, spec)
        for value in dim.values_to_check():
            _check_value(base, dim, spec, value)


def space_from_axes(axes: list[Axis]) -> list[Dimension]:
    """A --grid as categorical dimensions (a grid search over exactly its points)."""
    dims = []
    for axis in axes:
        check_axis_field(axis.field)
        dims.append(Dimension(axis.field, "categorical", choices=tuple(axis.values)))
    return dims


def space_json(dims: list[Dimension]) -> list[dict[str, Any]]:
    return [d.to_json() for d in dims]


def read_space(data: list[dict[str, Any]]) -> list[Dimension]:
    return [Dimension.from_json(d) for d in data]


def grid_search_space(dims: list[Dimension]) -> dict[str, list[Any]]:
    """The search space of Optuna's GridSampler: field -> its listed values (ranges are refused)."""
    grid: dict[str, list[Any]] = {}
    for dim in dims:
        if dim.kind != "categorical":
            raise ConfigError(dim.field, f"--space {dim.text()} is a range, and a grid needs listed values",
                              f"list them, e.g. --space {dim.field}={_number_text(dim.low)},{_number_text(dim.high)}"
                              ", or use --search tpe or random")
        grid[dim.field] = list(dim.choices or ())
    return grid
