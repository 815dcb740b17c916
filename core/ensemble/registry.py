"""Name -> combiner registry of ensemble schemes, filled by the `@register_combiner` decorator."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from core.errors import ConfigError
from core.registry import Registry
from core.ensemble.checks import check_member_logits, check_val


@dataclass
class Combined:
    """What a combiner returns, for every split it was given."""

    probs: dict[str, Tensor]  # split -> (N, K) ensemble probabilities, rows sum to 1
    weights: dict[str, Tensor] | None = None  # split -> (N, M) per-example member weights, rows sum to 1
    global_weights: Tensor | None = None  # (M,) one weight per member, for schemes that learn them
    info: dict = field(default_factory=dict)  # fitted values for display: concentration, val NLL, ...
    # The fitted rule itself: member logits (M, B, K) -> ensemble probabilities (B, K), for logits
    # that were not among the splits (teacher logits of augmented views, or live teachers).
    predict: Callable[[Tensor], Tensor] | None = None

    @classmethod
    def from_rule(cls, logits: Mapping[str, Tensor], rule: Callable[[Tensor], Tensor]) -> "Combined":
        """Apply `rule` (member logits (M, N, K) -> probs (N, K)) to every split, and keep it."""
        return cls(probs={split: rule(z) for split, z in logits.items()}, predict=rule)


# A combiner maps checked member logits {split: (M, N, K) fp32} and the val labels (None unless the
# scheme fits on val) to a Combined.
Combiner = Callable[[dict[str, Tensor], "Tensor | None"], Combined]


@dataclass(frozen=True)
class _Entry:
    fn: Combiner
    fits_on_val: bool


_COMBINERS: Registry[_Entry] = Registry("ensemble scheme", "ensemble.scheme", ConfigError)


def register_combiner(name: str, *, fits_on_val: bool = False) -> Callable[[Combiner], Combiner]:
    """Decorator: make `fn(logits, val_labels) -> Combined` available as ensemble.scheme = `name`."""
    def deco(fn: Combiner) -> Combiner:
        if not inspect.getdoc(fn):
            raise ValueError(f"ensemble combiner '{name}' needs a docstring with its formula")
        _COMBINERS.add(name, _Entry(fn, fits_on_val), identity=fn)
        return fn
    return deco


def list_combiners() -> list[str]:
    """Registered scheme names, in registration order."""
    return _COMBINERS.names()


_entry = _COMBINERS.get


def fits_on_val(name: str) -> bool:
    """True when scheme `name` fits parameters on the val split (needs val logits and labels)."""
    return _entry(name).fits_on_val


def combiner_doc(name: str) -> str:
    """The docstring (with the formula) of scheme `name`, for the dashboard."""
    return inspect.getdoc(_entry(name).fn) or ""


def combine(scheme: str, logits: Mapping[str, Tensor | Sequence[Tensor]],
            val_labels: Tensor | None = None) -> Combined:
    """Combine member logits {split: (M, N, K)} with `scheme`; fitting schemes use only logits["val"]."""
    entry = _entry(scheme)
    members = check_member_logits(logits)
    labels = check_val(members, val_labels, scheme) if entry.fits_on_val else None
    # Fitting schemes switch gradients back on for their own small optimisation on val.
    with torch.no_grad():
        return entry.fn(members, labels)
