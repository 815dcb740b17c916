"""Batched augmentation on the device: random shifts with reflect padding and horizontal flips.

Every function draws its random numbers from the `generator` it is given (on that generator's
device) so that a seeded generator reproduces the same batch, and then works on the whole batch at
once: there is no per-sample Python loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_pad(image_size: int) -> int:
    """Padding of the random shift in pixels: 1/8 of the side, at least 1 px."""
    return max(1, image_size // 8)


def _rand_device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    # Random numbers must be drawn on the generator's own device; they are moved to x afterwards.
    return generator.device if generator is not None else x.device


def shift(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Pad each image by `pad` px (reflect) and crop it back at its own offset.

    `offsets` is (2, B) int64 on x's device: row and column of the crop's corner in the padded image,
    each in [0, 2 * pad]; `pad` is the unshifted crop.
    """
    b, c, h, w = x.shape
    # Reflect padding needs pad < side; sides are >= 8 px and pad is 1/8 of the side.
    mode = "reflect" if pad < min(h, w) and x.is_floating_point() else "constant"
    padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H) source rows
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W) source columns
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad each image by `pad` px (reflect) and crop it back at its own random offset."""
    if pad <= 0 or x.shape[0] == 0:
        return x
    dev = _rand_device(x, generator)
    offsets = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), generator=generator, device=dev).to(x.device)
    return shift(x, pad, offsets)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    if x.shape[0] == 0:
        return x
    dev = _rand_device(x, generator)
    flip = torch.rand(x.shape[0], generator=generator, device=dev).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment_batch(x: torch.Tensor, *, pad: int, flip: bool,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random shift, then a random flip where the data set allows it."""
    x = random_shift(x, pad, generator)
    if flip:
        x = random_flip(x, generator)
    return x
