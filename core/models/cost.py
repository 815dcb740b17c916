"""Model size and compute: parameter counts and forward FLOPs for one image."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters())


def _input_like(model: nn.Module, in_chans: int, image_size: int) -> torch.Tensor:
    """A zero image batch of one on the model's device and float dtype (CPU for a parameterless model)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros(1, in_chans, image_size, image_size, device=device, dtype=dtype)


def count_flops(model: nn.Module, in_chans: int, image_size: int) -> int:
    """Forward FLOPs for one image (2 per multiply-add, matmul/conv/attention ops, as FlopCounterMode counts).

    Runs in eval mode without grad on the model's own device (meta works and is free); every
    module's train/eval flag and every parameter's requires_grad is restored afterwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    x = _input_like(model, in_chans, image_size)
    try:
        model.eval()  # eval: BN uses running stats, so the forward changes no buffers
        # FlopCounterMode's module tracker hooks autograd on inputs that require grad and fails on
        # parameters fed straight into a submodule under no_grad (timm's attention-pool latents)
        for p, _ in grads:
            p.requires_grad_(False)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        for module, training in modes:
            module.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)
