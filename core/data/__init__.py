"""Data sets as seeded train/val/test splits resident on the device, with on-device augmentation.

    bundle = load_data(cfg.data, device)
    for x, y, idx in bundle.batches("train", 128, shuffle=True, augment=True, generator=g): ...

New data sets register a loader with `@register_dataset("name")` returning a `SourceData`.
"""

from core.data.augment import augment_batch, random_flip, random_shift, shift_pad
from core.data.bundle import DataBundle, Split
from core.data.load import load_data
from core.data.views import ViewGrid
from core.data.registry import SourceData, get_loader, list_datasets, register_dataset
from core.data import sources  # noqa: F401  (registers the built-in data sets)

__all__ = [
    "DataBundle", "Split", "SourceData", "load_data", "list_datasets", "register_dataset",
    "get_loader", "random_shift", "random_flip", "augment_batch", "shift_pad", "ViewGrid",
]
