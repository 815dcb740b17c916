"""Tensor utilities shared by the loaders: resizing uint8 images on a device, channel statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Images per resize/statistics chunk: bounds the float32 working copy (4096 x 3 x 224 x 224 x 4 B
# is ~2.5 GB at the largest common size, ~50 MB at 32 px).
CHUNK = 4096


def _resize_chunk(x: torch.Tensor, size: int) -> torch.Tensor:
    out = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_uint8(x: torch.Tensor, size: int, device: torch.device,
                 out_device: torch.device | None = None) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to size x size on `device` (bilinear, antialiased).

    The result lands on `out_device` (default `device`); chunks keep the float copy small.
    """
    out_device = device if out_device is None else out_device
    if x.shape[-2:] == (size, size):
        return x.to(out_device)
    parts = []
    for start in range(0, x.shape[0], CHUNK):
        chunk = x[start:start + CHUNK].to(device)
        try:
            resized = _resize_chunk(chunk, size)
        except (NotImplementedError, RuntimeError):
            # Some backends (e.g. MPS) lack antialiased interpolation; the CPU always has it.
            resized = _resize_chunk(chunk.cpu(), size)
        parts.append(resized.to(out_device))
    if not parts:
        return torch.empty((0, x.shape[1], size, size), dtype=torch.uint8, device=out_device)
    return torch.cat(parts)


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0-1 scale (float64 sums, chunked)."""
    c = x.shape[1]
    # MPS has no float64; sum there on the CPU instead.
    dev = torch.device("cpu") if x.device.type == "mps" else x.device
    total = torch.zeros(c, dtype=torch.float64, device=dev)
    total_sq = torch.zeros(c, dtype=torch.float64, device=dev)
    count = 0
    for start in range(0, x.shape[0], CHUNK):
        chunk = x[start:start + CHUNK].to(dev).to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
        count += chunk.numel() // c
    if count == 0:
        return tuple([0.5] * c), tuple([0.25] * c)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    # A constant channel has std 0; dividing by 1 leaves it at 0 after centring instead of NaN.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(float(v) for v in mean.cpu()), tuple(float(v) for v in std.cpu())
