"""Model names: validation with suggestions, and the searchable list of timm models."""

from __future__ import annotations

import difflib
import functools
import logging
import re

import timm
import torch
from timm.models import is_model, split_model_name_tag

from core.errors import ModelError

log = logging.getLogger(__name__)

# Names timm resolves through a remote or local config rather than its registry.
_SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


@functools.lru_cache(maxsize=1)
def all_names() -> tuple[str, ...]:
    """Every architecture name timm registers (without pretrained tags)."""
    return tuple(timm.list_models())


def _filter_hint(name: str) -> str:
    """A short filter that lists something: 'mobilenetv3_smal' -> 'mobilenetv3', 'resnet1800' -> 'resnet'."""
    word = name.lower().split("_")[0] or name.lower()
    for candidate in (word, re.sub(r"\d+$", "", word), word[:4]):
        if candidate and any(candidate in n for n in all_names()):
            return candidate
    return word


def resolve_name(name: str, field: str) -> str:
    """Return the name timm should build (tag kept), or raise ModelError with close matches."""
    name = (name or "").strip()
    if name.startswith(_SOURCE_PREFIXES):
        return name
    arch, _tag = split_model_name_tag(name)
    if is_model(arch):
        return name
    if is_model(arch.lower()):
        return name.lower()
    close = difflib.get_close_matches(arch.lower(), all_names(), n=4, cutoff=0.6)
    fix = f"run `kdlab models --filter {_filter_hint(arch)}` to list names"
    if close:
        fix += f"; close matches: {', '.join(close)}"
    raise ModelError(field, f"unknown model '{name}'", fix)


def _as_glob(pattern: str | None) -> str:
    """A bare word matches anywhere in the name; wildcards are passed through to timm."""
    if not pattern:
        return "*"
    pattern = pattern.strip().lower()
    return pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"


@functools.lru_cache(maxsize=4096)
def meta_params(name: str) -> int | None:
    """Parameters of timm's default build (1000 classes, 3 channels), counted on the meta device."""
    try:
        try:
            # device= keeps small schedule tensors (drop-path rates) on the CPU, which meta-only ops lack
            model = timm.create_model(name, device="meta")
        except TypeError:
            with torch.device("meta"):
                model = timm.create_model(name)
    except Exception as err:  # noqa: BLE001 - any build failure means "skip this name"
        log.debug("timm model %s cannot be built to count its parameters (%s: %s); not listed",
                  name, type(err).__name__, err)
        return None
    return sum(p.numel() for p in model.parameters())


def list_models(pattern: str | None = None, limit: int | None = None) -> list[dict]:
    """timm models matching pattern (a word or a glob) as [{'name', 'params'}], skipping unbuildable ones."""
    rows: list[dict] = []
    for name in timm.list_models(_as_glob(pattern)):
        if limit is not None and len(rows) >= limit:
            break
        params = meta_params(name)
        if params is not None:
            rows.append({"name": name, "params": params})
    return rows
