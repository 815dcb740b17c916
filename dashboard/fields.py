"""Setup-form widgets made from the config's pydantic fields.

Each widget takes its default, limits (ge/le/gt/lt), choices (a Literal field's values, or a
registry's names) and help text (the field's description) from `Model.model_fields[name]` in
core/config.py, so a field added or changed there shows in the form with its own range and words;
`more_settings` lists every field of a section that the page does not lay out by hand.

    d["alpha"] = slider_for(DistillConfig, "alpha", d, key="alpha", step=0.05)
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping

import streamlit as st
from pydantic import BaseModel, ValidationError

from core.config import RunConfig
# The field reader lives in core (the search space checks fields too, and core never imports
# streamlit); its names stay importable from here for the pages and tests that use them.
from core.config_fields import FieldSpec, _registry, field_spec  # noqa: F401

log = logging.getLogger(__name__)

KEY_PREFIX = "cfg."  # keys of the generated widgets; Setup drops them when it loads another config


def _decimals(spec: FieldSpec, value: Any) -> int:
    """Decimals a float widget shows: enough for the first significant digit of its default and value."""
    digits = 2
    for v in (spec.default, value, spec.gt, spec.ge):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < abs(v) < 1:
            digits = max(digits, math.ceil(-math.log10(abs(v))) + 1)
    return min(digits, 8)


def _initial(spec: FieldSpec, section: Mapping[str, Any]) -> Any:
    """The widget's starting value: the section's (a preset or a loaded config), else the field's default."""
    value = section.get(spec.name, spec.default)
    if value is None:
        return None
    try:
        return spec.kind(value)
    except (TypeError, ValueError):
        # A loaded config may hold a value of the wrong type; the widget cannot show it, so it starts
        # from the default and the form's validation (which sees the widget's value) stays consistent.
        log.warning("field %s: %r is not a %s; the form shows the default %r instead", spec.name, value,
                    spec.kind.__name__, spec.default)
        st.warning(f"{spec.name}: {value!r} is not a {spec.kind.__name__}; showing the default {spec.default!r}")
        return spec.default


def _clamped(spec: FieldSpec, value: Any, low: float | None, high: float | None) -> Any:
    """`value` inside [low, high] (a widget refuses one outside), with a message when it had to move."""
    if value is None:
        return None
    moved = min(value, high) if high is not None else value
    moved = max(moved, low) if low is not None else moved
    if moved != value:
        st.warning(f"{spec.name}: {value} is outside its range; shown as {moved}, the nearest allowed value")
    return spec.kind(moved)


def number_input_for(model_cls: type[BaseModel], name: str, section: Mapping[str, Any], *, key: str,
                     label: str | None = None, step: float | None = None, format: str | None = None,
                     container: Any = st) -> int | float | None:
    """A number input for an int or float field: its bounds, default and description; empty means None
    where the field allows None."""
    spec = field_spec(model_cls, name)
    if spec.kind not in (int, float):
        raise ValueError(f"{model_cls.__name__}.{name} is a {spec.kind.__name__}, not a number")
    value = _initial(spec, section)
    if spec.kind is int:
        resolution = 1
        step = int(step or 1)
    else:
        decimals = _decimals(spec, value)
        format = format or f"%.{decimals}f"
        resolution = 10.0 ** -int(format.split(".")[1].rstrip("f")) if "." in format else 10.0 ** -decimals
        step = float(step) if step else 10.0 ** -min(decimals - 1, 3)
    low, high = spec.minimum(resolution), spec.maximum(resolution)
    cast = spec.kind
    value = _clamped(spec, value, low, high)
    if value is None and not spec.optional:
        value = low if low is not None else cast(0)
    return container.number_input(
        label or spec.label, min_value=None if low is None else cast(low), max_value=None if high is None else cast(high),
        value=value, step=cast(step), format=format, key=key, help=spec.help,
        placeholder="empty: the default" if spec.optional else None)


def slider_for(model_cls: type[BaseModel], name: str, section: Mapping[str, Any], *, key: str, step: float,
               label: str | None = None, container: Any = st) -> float | int:
    """A slider over a bounded number field's whole range (both limits must be set in the field)."""
    spec = field_spec(model_cls, name)
    low, high = spec.minimum(step), spec.maximum(step)
    if low is None or high is None or spec.kind not in (int, float):
        raise ValueError(f"{model_cls.__name__}.{name} needs a number field with both limits for a slider")
    start = _initial(spec, section)
    value = _clamped(spec, spec.default if start is None else start, low, high)
    cast = spec.kind
    return container.slider(label or spec.label, cast(low), cast(high), cast(value), cast(step), key=key,
                            help=spec.help)


def select_for(model_cls: type[BaseModel], name: str, section: Mapping[str, Any], *, key: str,
               label: str | None = None, options: Iterable[Any] | None = None, container: Any = st) -> Any:
    """A select box over a Literal field's values or its registry's names (or `options`); the section's
    value, else the default, preselected."""
    spec = field_spec(model_cls, name)
    choices = list(options if options is not None else spec.choices or ())
    if not choices:
        raise ValueError(f"{model_cls.__name__}.{name} has no fixed choices: pass options")
    value = section.get(name, spec.default)
    if value not in choices:
        # e.g. 'cuda:1' or a dataset of a plugin not loaded here: offered too, so the config is kept as is
        choices.append(value)
    return container.selectbox(label or spec.label, choices, index=choices.index(value), key=key, help=spec.help)


def text_input_for(model_cls: type[BaseModel], name: str, section: Mapping[str, Any], *, key: str,
                   label: str | None = None, container: Any = st) -> str | None:
    """A text input for a str field; empty means None where the field allows None."""
    spec = field_spec(model_cls, name)
    value = section.get(name, spec.default)
    text = container.text_input(label or spec.label, "" if value is None else str(value), key=key, help=spec.help)
    return None if spec.optional and not text.strip() else text


def checkbox_for(model_cls: type[BaseModel], name: str, section: Mapping[str, Any], *, key: str,
                 label: str | None = None, container: Any = st) -> bool:
    """A checkbox for a bool field."""
    spec = field_spec(model_cls, name)
    return container.checkbox(label or spec.label, bool(section.get(name, spec.default)), key=key, help=spec.help)


def widget_for(model_cls: type[BaseModel], name: str, section: Mapping[str, Any], *, key: str,
               label: str | None = None, container: Any = st) -> Any:
    """The widget its type calls for: checkbox, select box (choices), number or text input."""
    spec = field_spec(model_cls, name)
    kwargs = dict(key=key, label=label, container=container)
    if spec.kind is bool:
        return checkbox_for(model_cls, name, section, **kwargs)
    if spec.choices:
        return select_for(model_cls, name, section, **kwargs)
    if spec.kind in (int, float):
        return number_input_for(model_cls, name, section, **kwargs)
    return text_input_for(model_cls, name, section, **kwargs)


def form_fields(model_cls: type[BaseModel]) -> list[str]:
    """The fields of `model_cls` that have a form widget (nested sections and lists have their own)."""
    names = []
    for name in model_cls.model_fields:
        try:
            field_spec(model_cls, name)
        except ValueError as err:
            # e.g. RunConfig.data (a section) or RunConfig.teachers (a list): the page lays those out
            # itself, so leaving them out of a list of scalar widgets loses nothing.
            log.debug("no form widget for %s.%s: %s", model_cls.__name__, name, err)
            continue
        names.append(name)
    return names


def more_settings(model_cls: type[BaseModel], section: dict[str, Any], shown: Iterable[str], path: str,
                  columns: int = 3) -> None:
    """Every field of `model_cls` not in `shown`, each with its own widget, written into `section`."""
    rest = [n for n in form_fields(model_cls) if n not in set(shown)]
    if not rest:
        return
    cols = st.columns(columns)
    for i, name in enumerate(rest):
        # labelled with the dotted path that --set, the YAML and the validation messages use
        dotted = f"{path}.{name}" if path else name
        section[name] = widget_for(model_cls, name, section, key=f"{KEY_PREFIX}{dotted}", label=dotted,
                                   container=cols[i % columns])


def column_config_for(model_cls: type[BaseModel], name: str, label: str | None = None) -> Any:
    """A data_editor column for a field: bounds, a required flag and the description as help."""
    spec = field_spec(model_cls, name)
    label = label or spec.name
    required = spec.default is None and not spec.optional
    if spec.kind is bool:
        return st.column_config.CheckboxColumn(label, help=spec.help, default=bool(spec.default))
    if spec.kind in (int, float):
        resolution = 1 if spec.kind is int else 10.0 ** -_decimals(spec, None)
        return st.column_config.NumberColumn(label, help=spec.help, min_value=spec.minimum(resolution),
                                             max_value=spec.maximum(resolution), required=required,
                                             step=1 if spec.kind is int else resolution, default=spec.default)
    if spec.choices:
        return st.column_config.SelectboxColumn(label, help=spec.help, options=list(spec.choices),
                                                required=required, default=spec.default)
    return st.column_config.TextColumn(label, help=spec.help, required=required, default=spec.default)


def validate_form(raw: Mapping[str, Any]) -> tuple[RunConfig | None, dict[str, str]]:
    """The form's config, validated once: (config, {}) or (None, field path -> message)."""
    try:
        return RunConfig.model_validate(raw), {}
    except ValidationError as err:
        problems: dict[str, str] = {}
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "config"
            problems.setdefault(loc, e["msg"].removeprefix("Value error, "))
        return None, problems
