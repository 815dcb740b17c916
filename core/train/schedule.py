"""Learning-rate schedules as a pure function of the global step, so resuming needs only the step."""

from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, peak_lr: float, schedule: str, warmup_fraction: float) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total_steps`.

    onecycle: linear warm-up from peak/25 to peak, then cosine down to peak/1e4 (as torch's OneCycleLR).
    cosine: linear warm-up from 0 to peak, then cosine down to 0.
    """
    total_steps = max(total_steps, 1)
    warmup = int(round(warmup_fraction * total_steps))
    if schedule == "onecycle":
        start, end = peak_lr / 25.0, peak_lr / 1e4
    else:
        start, end = 0.0, 0.0
    if step < warmup:
        return start + (peak_lr - start) * (step + 1) / warmup
    progress = (step - warmup) / max(total_steps - warmup, 1)
    progress = min(max(progress, 0.0), 1.0)
    return end + (peak_lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
