"""What one config field accepts, read from core/config.py's pydantic models (`FieldSpec`).

Its type, default, limits (ge/gt/le/lt), choices (a Literal's values, or a registry's names) and
description come from `Model.model_fields[name]`, so a field added or changed in core/config.py is
seen with its own range everywhere: the dashboard's form widgets (dashboard/fields.py) and the
search space's checks (core/search/space.py). No streamlit here: core never imports it.

    spec_for_path("distill.alpha")  # FieldSpec(name='alpha', kind=float, ge=0.0, le=1.0, ...)
"""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from core.config import RunConfig
from core.errors import ConfigError


def _registry(model: str, name: str) -> Callable[[], list[str]] | None:
    """The registry whose names are the valid values of a str field (imported when first needed:
    the registries bring torch, which a config check should not pay for until it reads them)."""
    if (model, name) == ("DataConfig", "name"):
        from core.data import list_datasets
        return list_datasets
    if (model, name) == ("EnsembleConfig", "scheme"):
        from core.ensemble import list_combiners
        return list_combiners
    if (model, name) == ("DistillConfig", "loss"):
        from core.distill import list_kd_losses
        return list_kd_losses
    if (model, name) == ("RunConfig", "device"):
        from core.device import DEVICE_CHOICES
        return lambda: list(DEVICE_CHOICES)
    return None


@dataclass(frozen=True)
class FieldSpec:
    """What a widget or a search dimension needs to know about one config field."""

    name: str
    kind: type                       # int, float, bool or str (the field's type without None)
    optional: bool                   # None is a valid value (an empty widget)
    default: Any                     # None for a required field
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").capitalize()

    def minimum(self, resolution: float) -> float | None:
        """The smallest value a widget may offer: ge, or gt plus the widget's resolution."""
        if self.ge is not None:
            return self.ge
        return None if self.gt is None else self.gt + resolution

    def maximum(self, resolution: float) -> float | None:
        """The largest value a widget may offer: le, or lt minus the widget's resolution."""
        if self.le is not None:
            return self.le
        return None if self.lt is None else self.lt - resolution


def field_spec(model_cls: type[BaseModel], name: str, *, registry: bool = True) -> FieldSpec:
    """Type, default, bounds, choices and description of `model_cls.name`, read from its pydantic field.

    `registry=False` leaves a registry-backed str field's choices as None, so that reading a field's
    type does not import the registries (and torch) behind it.
    """
    try:
        info = model_cls.model_fields[name]
    except KeyError:
        raise ValueError(f"{model_cls.__name__} has no field '{name}'; its fields are "
                         f"{', '.join(model_cls.model_fields)}") from None
    annotation, optional = info.annotation, False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        optional = len(args) < len(get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    choices = None
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        annotation = type(choices[0])
    elif annotation is str and registry and (names := _registry(model_cls.__name__, name)) is not None:
        choices = tuple(names())
    if annotation not in (int, float, bool, str):
        raise ValueError(f"{model_cls.__name__}.{name} is a {annotation}: only int, float, bool and str "
                         "fields (optionally None or a Literal) have a form widget")
    bounds: dict[str, float] = {}
    for meta in info.metadata:
        for bound, cls in (("ge", annotated_types.Ge), ("gt", annotated_types.Gt), ("le", annotated_types.Le),
                           ("lt", annotated_types.Lt)):
            if isinstance(meta, cls):
                bounds[bound] = getattr(meta, bound)
    default = info.default if info.default is not PydanticUndefined else None
    return FieldSpec(name, annotation, optional, default, choices=choices, help=info.description or "", **bounds)


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(section model, is a list of them) of a RunConfig field's annotation; (None, False) for a scalar."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def sections() -> dict[str, tuple[type[BaseModel], bool]]:
    """RunConfig's sections, name -> (model, is a list): read from its fields, so a new section is seen."""
    out: dict[str, tuple[type[BaseModel], bool]] = {}
    for name, info in RunConfig.model_fields.items():
        model, is_list = _model_of(info.annotation)
        if model is not None:
            out[name] = (model, is_list)
    return out


def _unknown(path: str, what: str, name: str, valid: list[str], example_prefix: str) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {example_prefix}{close[0]}? " if close else ""
    return ConfigError(path, f"{what} '{name}'", f"{hint}valid fields: {', '.join(valid)}")


def spec_for_path(path: str, *, registry: bool = True) -> FieldSpec:
    """The FieldSpec of a dotted config path: `distill.temperature`, `seed`, `teachers.0.model`.

    Unknown sections and fields are ConfigErrors naming the path and listing the valid fields.
    """
    parts = path.strip().split(".")
    known = sections()
    top = [n for n in RunConfig.model_fields]
    if len(parts) == 1:
        if parts[0] in known:
            first = next(iter(known[parts[0]][0].model_fields))
            raise ConfigError(path, "is a section, not a field",
                              f"name one of its fields, e.g. {parts[0]}.{first}")
        if parts[0] not in RunConfig.model_fields:
            raise _unknown(path, "the config has no field", parts[0], top, "")
        return field_spec(RunConfig, parts[0], registry=registry)
    section, rest = parts[0], parts[1:]
    if section not in known:
        scalars = [n for n in top if n not in known]
        if section in scalars:
            raise ConfigError(path, f"'{section}' is a value, not a section", f"write just {section}")
        raise ConfigError(path, f"'{section}' is not a config section",
                          f"use one of: {', '.join(known)} (or a top-level field: {', '.join(scalars)})")
    model, is_list = known[section]
    if is_list:
        if not rest[0].isdigit():
            raise ConfigError(path, f"'{section}' is a list", f"index it, e.g. {section}.0.{rest[0]}")
        section, rest = f"{section}.{rest[0]}", rest[1:]
    valid = list(model.model_fields)
    if len(rest) != 1:
        raise ConfigError(path, f"'{section}' has no nested sections", f"write {section}.FIELD with FIELD one "
                          f"of: {', '.join(valid)}")
    name = rest[0]
    if name not in model.model_fields:
        raise _unknown(path, f"{section} has no field", name, valid, f"{section}.")
    try:
        return field_spec(model, name, registry=registry)
    except ValueError as err:  # a field of a type no widget or dimension handles (none such today)
        raise ConfigError(path, str(err), "name an int, float, bool or str field") from None
