"""scikit-learn's bundled 8x8 handwritten digits: 1,797 images, works offline."""

from __future__ import annotations

import torch

from core.config import DataConfig
from core.data.registry import SourceData, register_dataset

# load_digits pixels count ink in a 4x4 block of the 32x32 original: 0..16.
_DIGITS_MAX = 16.0


@register_dataset("digits")
def load_digits(cfg: DataConfig) -> SourceData:
    """The sklearn digits as 1x8x8 uint8 images (resized later, on the device)."""
    # Imported here: sklearn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.from_numpy(bunch.images).to(torch.float32)
    x = (images * (255.0 / _DIGITS_MAX)).round().clamp(0, 255).to(torch.uint8).unsqueeze(1)
    y = torch.from_numpy(bunch.target).to(torch.long)
    return SourceData(x=x.contiguous(), y=y, class_names=[str(int(t)) for t in bunch.target_names],
                      flip=False)
