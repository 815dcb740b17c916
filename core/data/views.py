"""A fixed grid of discrete augmentation views (shift x flip), for consistent teaching.

Random shifts draw integer offsets and random flips a coin, so training augmentation is already a
choice among finitely many views. Naming them lets the teachers' logits be cached per view and the
student be shown exactly the view its target was computed on (Beyer et al., "Knowledge distillation:
A good teacher is patient and consistent", 2022). With `stride` 1 the grid holds every offset, and
sampling it uniformly is the same distribution as `augment_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.data.augment import shift, shift_pad


@dataclass(frozen=True)
class ViewGrid:
    """Views v = (row offset, column offset, flip), numbered 0..num_views-1 (see `table`)."""

    pad: int                 # shift padding in px (see augment.shift_pad)
    flip: bool               # whether flipped views are in the grid
    stride: int = 1          # px between neighbouring offsets; 1 = every offset

    @classmethod
    def for_data(cls, image_size: int, flip: bool, augment: bool = True, stride: int = 1) -> "ViewGrid":
        """The grid matching a data set's training augmentation (one plain view if it has none)."""
        if not augment:
            return cls(pad=0, flip=False, stride=1)
        return cls(pad=shift_pad(image_size), flip=flip, stride=stride)

    @property
    def offsets(self) -> list[int]:
        """Crop offsets per axis in [0, 2 * pad], always including the centre `pad`."""
        if self.pad == 0:
            return [0]
        below = list(range(self.pad, -1, -self.stride))[::-1]
        above = list(range(self.pad + self.stride, 2 * self.pad + 1, self.stride))
        return below + above

    @property
    def table(self) -> torch.Tensor:
        """(V, 3) int64: row offset, column offset, flip (0/1) of every view."""
        flips = [0, 1] if self.flip else [0]
        rows = [(r, c, f) for f in flips for r in self.offsets for c in self.offsets]
        return torch.tensor(rows, dtype=torch.long)

    @property
    def num_views(self) -> int:
        return len(self.offsets) ** 2 * (2 if self.flip else 1)

    @property
    def identity(self) -> int:
        """Index of the centred, unflipped view."""
        centre = self.offsets.index(self.pad) if self.pad else 0
        return centre * len(self.offsets) + centre

    def describe(self) -> dict:
        """Plain-dict description (part of the cache key)."""
        return {"pad": self.pad, "flip": self.flip, "stride": self.stride, "views": self.num_views}

    def sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """(n,) view indices drawn uniformly, from `generator` (on its own device), moved to `device`."""
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_views, (n,), generator=generator, device=gen_device).to(device)

    def apply(self, x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) float, each shown in its own view `views` (B,)."""
        if x.shape[0] == 0 or self.num_views == 1:
            return x
        t = self.table.to(x.device)[views]  # (B, 3)
        out = shift(x, self.pad, t[:, :2].T.contiguous()) if self.pad else x
        if self.flip:
            out = torch.where(t[:, 2].bool()[:, None, None, None], out.flip(3), out)
        return out

    def apply_all(self, x: torch.Tensor, view: int) -> torch.Tensor:
        """Every image of the batch in the same view."""
        return self.apply(x, torch.full((x.shape[0],), view, dtype=torch.long, device=x.device))
