"""Name -> loader registry of data sets, filled by the `@register_dataset` decorator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.config import DataConfig
from core.errors import DataError


@dataclass
class SourceData:
    """What a loader returns: uint8 images on the CPU at their native size, before splitting."""

    x: torch.Tensor  # (N, C, H, W) uint8: the pool that train/val (and test, if no official one) come from
    y: torch.Tensor  # (N,) int64 class indices
    class_names: list[str]
    flip: bool  # a left-right flip keeps the class (False for digits)
    test_x: torch.Tensor | None = None  # the official test split, when the data set has one
    test_y: torch.Tensor | None = None

    @property
    def has_official_test(self) -> bool:
        """True when the data set ships its own test split."""
        return self.test_x is not None


Loader = Callable[[DataConfig], SourceData]
_LOADERS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make `fn(cfg) -> SourceData` loadable as data.name = `name`."""
    def deco(fn: Loader) -> Loader:
        if name in _LOADERS and _LOADERS[name] is not fn:
            raise ValueError(f"data set '{name}' is registered twice")
        _LOADERS[name] = fn
        return fn
    return deco


def list_datasets() -> list[str]:
    """Registered data set names, in registration order (the embedded default first)."""
    return list(_LOADERS)


def get_loader(name: str) -> Loader:
    """The loader of data set `name`, or a DataError listing the choices."""
    try:
        return _LOADERS[name]
    except KeyError:
        raise DataError("data.name", f"unknown data set '{name}'",
                        f"pick one of {', '.join(list_datasets())}") from None
