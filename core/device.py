"""Device choice and the numeric settings that go with it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """Turn 'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' into an available torch.device."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", f"'{name}' was asked for but CUDA is not available here",
                              "use device=auto or device=cpu")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device", "'mps' was asked for but MPS is not available here",
                              "use device=auto or device=cpu")
        return torch.device("mps")
    raise ConfigError("device", f"unknown device '{name}'", f"pick one of {', '.join(DEVICE_CHOICES)}")


@dataclass(frozen=True)
class Precision:
    """How a device runs models: autocast dtype (None = fp32) and memory format."""

    autocast_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self, device: torch.device):
        """A context manager for the forward pass (a no-op when autocast_dtype is None)."""
        if self.autocast_dtype is None:
            return torch.autocast(device_type=device.type, enabled=False)
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def precision_for(device: torch.device) -> Precision:
    """bf16 + channels_last on CUDA; fp32 + channels_last on CPU (bf16 is ~22x slower without
    native bf16 units); fp32 on MPS, whose channels_last conv support is patchy."""
    if device.type == "cuda":
        return Precision(torch.bfloat16, True)
    if device.type == "cpu":
        return Precision(None, True)
    return Precision(None, False)
