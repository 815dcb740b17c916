"""The loaded data set: three splits of uint8 images plus everything needed to batch them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from core.data.augment import augment_batch, shift_pad

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Images and labels of one split."""

    x: torch.Tensor  # (N, C, H, W) uint8; on the bundle's device, or on the CPU when streaming
    y: torch.Tensor  # (N,) int64, on the same device as x
    source_index: torch.Tensor | None = None  # (N,) int64 CPU: rows of the loader's arrays these came from

    def __len__(self) -> int:
        return int(self.y.shape[0])


class _BatchIndexed(Dataset):
    """Items are whole batches: the sampler hands over a list of indices, one gather per batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return self.x[index], self.y[index], index


@dataclass
class DataBundle:
    """Train/val/test splits with their shape, class names and normalisation statistics."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_chans: int
    image_size: int
    class_names: list[str]
    mean: tuple[float, ...]  # per channel, 0-1 scale, from the train split
    std: tuple[float, ...]
    flip: bool  # a left-right flip keeps the class
    device: torch.device
    streaming: bool  # over the memory budget: splits stay on the CPU and batches come via a DataLoader
    num_workers: int = 0  # DataLoader workers when streaming
    augment: bool = True  # data.augment: False turns training-time augmentation off for this data set
    _norm: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False,
                                                               repr=False, compare=False)

    def split(self, name: str) -> Split:
        """The split called `name` (train, val or test)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; pick one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        """How many batches `batches(split, batch_size, drop_last=...)` yields."""
        n = len(self.split(split))
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(self.device)
        if key not in self._norm:
            shape = (1, len(self.mean), 1, 1)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device).view(shape)
            std = torch.tensor(self.std, dtype=torch.float32, device=self.device).view(shape)
            self._norm[key] = (mean, std)
        return self._norm[key]

    def _scaled(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return x_uint8.to(self.device, non_blocking=True).float().div_(255.0)

    def _standardise(self, x01: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean_std()
        return (x01 - mean) / std

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (0-255) images -> float32 (x/255 - mean)/std on the bundle's device."""
        return self._standardise(self._scaled(x_uint8))

    def _order(self, n: int, shuffle: bool, generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
        if not shuffle:
            return torch.arange(n, device=device)
        # Draw on the generator's device so a seeded generator gives the same order anywhere.
        gen_device = generator.device if generator is not None else device
        return torch.randperm(n, generator=generator, device=gen_device).to(device)

    def _resident(self, s: Split, order: torch.Tensor, batch_size: int, drop_last: bool,
                  shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(s)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if drop_last and stop - start < batch_size:
                break
            if shuffle:
                idx = order[start:stop]
                yield s.x[idx], s.y[idx], idx
            else:
                # In order: slices are views, no gather needed.
                yield s.x[start:stop], s.y[start:stop], order[start:stop]

    def _streamed(self, s: Split, order: torch.Tensor, batch_size: int, drop_last: bool
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        sampler = BatchSampler(order.tolist(), batch_size, drop_last)
        # batch_size=None: the sampler's index lists go straight to __getitem__ (one gather each).
        loader = DataLoader(_BatchIndexed(s.x, s.y), batch_size=None, sampler=sampler,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for xb, yb, ib in loader:
            yield (xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True),
                   ib.to(self.device, non_blocking=True))

    def batches(self, split: str, batch_size: int, *, shuffle: bool, augment: bool,
                generator: torch.Generator | None = None, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (x float32 normalised, y int64, idx int64) on the device; idx = rows of the split."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        s = self.split(split)
        pad = shift_pad(self.image_size)
        if self.streaming:
            raw = self._streamed(s, self._order(len(s), shuffle, generator, torch.device("cpu")),
                                 batch_size, drop_last)
        else:
            raw = self._resident(s, self._order(len(s), shuffle, generator, self.device),
                                 batch_size, drop_last, shuffle)
        for xb, yb, ib in raw:
            x = self._scaled(xb)
            if augment and self.augment:
                x = augment_batch(x, pad=pad, flip=self.flip, generator=generator)
            yield self._standardise(x), yb, ib

    def bootstrap(self, seed: int) -> "DataBundle":
        """The same bundle with a train split of N rows drawn with replacement (a bagging draw)."""
        gen = torch.Generator().manual_seed(seed)
        rows = torch.randint(0, len(self.train), (len(self.train),), generator=gen)
        t = self.train
        source = t.source_index[rows] if t.source_index is not None else None
        resampled = Split(t.x[rows.to(t.x.device)], t.y[rows.to(t.y.device)], source)
        return replace(self, train=resampled)

    def summary(self) -> dict[str, Any]:
        """Plain-dict description: name, split sizes, shape, device, streaming."""
        return {
            "name": self.name,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "image_size": self.image_size,
            "device": str(self.device),
            "streaming": self.streaming,
            "flip": self.flip,
        }
