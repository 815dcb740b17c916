"""Helpers for the Compare page: what differs between two runs' configs."""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

ABSENT = "(absent)"  # shown for a key one config has and the other does not


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as one level of dotted paths: {"a": {"b": [1, 2]}} -> {"a.b.0": 1, "a.b.1": 2}.

    An empty dict or list is kept as a value, so [] and [x] still differ.
    """
    if isinstance(value, Mapping) and value:
        items = ((str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)) and value:
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return out


def config_diff(cfg_a: Mapping[str, Any], cfg_b: Mapping[str, Any],
                names: tuple[str, str] = ("a", "b")) -> pd.DataFrame:
    """One row per dotted key path whose value differs: columns key, names[0], names[1] (object dtype).

    Keys present in one config only show ABSENT for the other. Identical configs give an empty frame
    with the same columns. Keys keep cfg_a's order, then cfg_b's extra keys.
    """
    if not isinstance(cfg_a, Mapping) or not isinstance(cfg_b, Mapping):
        raise ValueError("config_diff needs two config dicts (e.g. RunConfig.to_dict() or config.yaml loaded)")
    if names[0] == names[1] or "key" in names:
        raise ValueError(f"names must be two different column names other than 'key', got {names}")
    a, b = flatten(cfg_a), flatten(cfg_b)
    rows = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key, ABSENT), b.get(key, ABSENT)
        if key not in a or key not in b or va != vb or type(va) is not type(vb) and not _same_number(va, vb):
            rows.append({"key": key, names[0]: va, names[1]: vb})
    return pd.DataFrame(rows, columns=["key", *names], dtype=object)


def _same_number(a: Any, b: Any) -> bool:
    """1 and 1.0 are the same setting; True and 1 are not."""
    numbers = (int, float)
    return (isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool)
            and not isinstance(b, bool) and a == b)
