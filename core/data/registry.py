"""Name -> loader registry of data sets, filled by the `@register_dataset` decorator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.config import DataConfig
from core.errors import DataError
from core.registry import Registry


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
_LOADERS: Registry[Loader] = Registry("data set", "data.name", DataError)


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make `fn(cfg) -> SourceData` loadable as data.name = `name`."""
    return _LOADERS.decorator(name)


def list_datasets() -> list[str]:
    """Registered data set names, in registration order (the embedded default first)."""
    return _LOADERS.names()


def get_loader(name: str) -> Loader:
    """The loader of data set `name`, or a DataError listing the choices."""
    return _LOADERS.get(name)
