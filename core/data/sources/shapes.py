"""Procedural shapes: a learnable toy task whose size, difficulty and channels are all knobs.

A class is a shape type (disk, square, ...); with more classes than types, classes also differ by
size, position and brightness. Every image has its own random position, scale, rotation, colour,
background and pixel noise. `overlap` blends each image's own class shape with that of a class drawn
uniformly at random, so overlap=1 makes the pixels independent of the label.

Shapes are drawn as signed-distance functions on a coordinate grid, vectorised over images, with a
one-pixel-wide linear edge ramp as anti-aliasing.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from core.config import DataConfig
from core.data.registry import SourceData, register_dataset
from core.errors import DataError

Sdf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _disk(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(u * u + v * v) - 1.0


def _square(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.maximum(u.abs(), v.abs()) - 0.8


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Apex (0, -0.9), base corners (+-0.9, 0.7); image v grows downwards.
    side = (1.6 * u.abs() - 0.9 * (v + 0.9)) / math.hypot(1.6, 0.9)
    return torch.maximum(side, v - 0.7)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    au, av = u.abs(), v.abs()
    return torch.minimum(torch.maximum(au - 0.28, av - 0.95), torch.maximum(au - 0.95, av - 0.28))


def _ring(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (torch.sqrt(u * u + v * v) - 0.72).abs() - 0.25


def _bars(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Three horizontal bars centred at v = -0.6, 0, 0.6, each 0.32 high.
    stripe = (v - 0.6 * torch.round(v / 0.6)).abs() - 0.16
    return torch.maximum(torch.maximum(stripe, v.abs() - 0.76), u.abs() - 0.85)


def _diamond(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u.abs() + v.abs() - 1.0) / math.sqrt(2.0)


def _frame(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (torch.maximum(u.abs(), v.abs()) - 0.68).abs() - 0.2


SHAPES: dict[str, Sdf] = {"disk": _disk, "square": _square, "triangle": _triangle, "cross": _cross,
                          "ring": _ring, "bars": _bars, "diamond": _diamond, "frame": _frame}
# Class attributes beyond the shape type, as (name suffix, value); index 0 is the plain variant.
# Sizes are radii in image half-widths, positions are centre offsets in the same unit.
SIZES = (("", 0.62), ("small", 0.38))
POSITIONS = (("", (0.0, 0.0)), ("top-left", (-0.45, -0.45)), ("top-right", (0.45, -0.45)),
             ("bottom-left", (-0.45, 0.45)), ("bottom-right", (0.45, 0.45)))
LEVELS = (("", 1.0), ("dim", 0.5))
MAX_CLASSES = len(SHAPES) * len(SIZES) * len(POSITIONS) * len(LEVELS)  # 160 distinct classes

# Images rendered per chunk: bounds the (chunk, H, W) float32 grids (4096 x 64 x 64 x 4 B = 64 MB).
_CHUNK = 4096


def _class_table(num_classes: int) -> dict[str, torch.Tensor | list[str]]:
    """Per-class shape index, size, centre offset, brightness and name."""
    n_shapes = len(SHAPES)
    shape_names = list(SHAPES)
    table: dict[str, list] = {"shape": [], "size": [], "offset": [], "level": [], "names": []}
    for c in range(num_classes):
        variant = c // n_shapes
        size = SIZES[variant % len(SIZES)]
        pos = POSITIONS[(variant // len(SIZES)) % len(POSITIONS)]
        level = LEVELS[(variant // (len(SIZES) * len(POSITIONS))) % len(LEVELS)]
        table["shape"].append(c % n_shapes)
        table["size"].append(size[1])
        table["offset"].append(pos[1])
        table["level"].append(level[1])
        parts = [level[0], size[0], shape_names[c % n_shapes], pos[0]]
        table["names"].append("-".join(p for p in parts if p))
    return {"shape": torch.tensor(table["shape"]), "size": torch.tensor(table["size"]),
            "offset": torch.tensor(table["offset"]), "level": torch.tensor(table["level"]),
            "names": table["names"]}


def _hue_to_rgb(hue: torch.Tensor) -> torch.Tensor:
    """Fully saturated colours for hues in [0, 1): (N,) -> (N, 3)."""
    k = torch.tensor([0.0, 4.0, 2.0])
    return ((hue[:, None] * 6.0 + k) % 6.0 - 3.0).abs().sub(1.0).clamp(0.0, 1.0)


def _render_masks(cls: torch.Tensor, table: dict, jitter: dict[str, torch.Tensor], size: int
                  ) -> torch.Tensor:
    """(N, H, W) coverage in [0, 1] of each image's class shape, times the class brightness."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0  # pixel centres in [-1, 1]
    scale = table["size"][cls] * jitter["scale"]
    centre = table["offset"][cls] + jitter["shift"]
    dx = grid[None, None, :] - centre[:, 0, None, None]
    dy = grid[None, :, None] - centre[:, 1, None, None]
    cos, sin = torch.cos(jitter["angle"])[:, None, None], torch.sin(jitter["angle"])[:, None, None]
    s = scale[:, None, None]
    u = (cos * dx + sin * dy) / s
    v = (cos * dy - sin * dx) / s
    pixel = (2.0 / size) / s  # one pixel in shape units: the width of the edge ramp
    sdf = torch.empty_like(u)
    shape_of = table["shape"][cls]
    for t, fn in enumerate(SHAPES.values()):
        sel = (shape_of == t).nonzero().flatten()
        if sel.numel():
            sdf[sel] = fn(u[sel], v[sel])
    cover = (0.5 - sdf / pixel).clamp_(0.0, 1.0)
    return cover * table["level"][cls][:, None, None]


def make_shapes(num_classes: int, count: int, image_size: int, channels: int, noise: float,
                overlap: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x uint8 (N, C, S, S), y int64 (N,), class names), deterministic for a given seed."""
    if channels not in (1, 3):
        raise DataError("data.channels", f"{channels} channels is not supported for shapes",
                        "use 1 (grey) or 3 (colour)")
    g = torch.Generator().manual_seed(int(seed))
    table = _class_table(num_classes)

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g) * (hi - lo) + lo

    # Balanced labels: every class gets floor or ceil of count / num_classes images.
    y = (torch.arange(count) % num_classes)[torch.randperm(count, generator=g)]
    other = torch.randint(0, num_classes, (count,), generator=g)
    jitter = {"scale": uniform(0.85, 1.15, count), "shift": uniform(-0.15, 0.15, count, 2),
              "angle": uniform(-0.3, 0.3, count)}  # radians, about +-17 degrees
    brightness = uniform(0.8, 1.0, count)
    background = uniform(0.0, 0.15, count)
    if channels == 3:
        saturation = uniform(0.5, 1.0, count)
        colour = 1.0 - saturation[:, None] * (1.0 - _hue_to_rgb(torch.rand(count, generator=g)))
    else:
        colour = torch.ones(count, 1)

    x = torch.empty((count, channels, image_size, image_size), dtype=torch.uint8)
    for start in range(0, count, _CHUNK):
        sl = slice(start, min(start + _CHUNK, count))
        part = {k: v[sl] for k, v in jitter.items()}
        cover = _render_masks(y[sl], table, part, image_size)
        if overlap > 0:
            cover = (1.0 - overlap) * cover + overlap * _render_masks(other[sl], table, part, image_size)
        ink = (cover * brightness[sl, None, None])[:, None]  # (n, 1, H, W)
        bg = background[sl, None, None, None]
        img = bg + (colour[sl, :, None, None] - bg) * ink
        if noise > 0:
            img = img + noise * torch.randn(img.shape, generator=g)
        x[sl] = (img * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return x, y, list(table["names"])


@register_dataset("shapes")
def load_shapes(cfg: DataConfig) -> SourceData:
    """Generated shapes at cfg.image_size, seeded by cfg.split_seed."""
    if cfg.num_classes > MAX_CLASSES:
        raise DataError("data.num_classes", f"shapes has {MAX_CLASSES} distinct classes at most",
                        f"use data.num_classes <= {MAX_CLASSES}")
    x, y, names = make_shapes(cfg.num_classes, cfg.count, cfg.image_size, cfg.channels, cfg.noise,
                              cfg.overlap, cfg.split_seed)
    # Every shape is left-right symmetric, but from 17 classes on, classes differ by left/right
    # position, which a flip would swap.
    flip = cfg.num_classes <= len(SHAPES) * len(SIZES)
    return SourceData(x=x, y=y, class_names=names, flip=flip)
