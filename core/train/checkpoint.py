"""Per-epoch checkpoints: model and optimiser tensors in safetensors, the rest in a small JSON file.

Files in a checkpoint folder (each written to a temporary name and renamed, so a crash mid-write
never leaves a half-written checkpoint):
  last.safetensors        model weights after the latest epoch
  last.optim.safetensors  optimiser state tensors and RNG states
  last.json               epoch, step, history, early-stopping state, fingerprint
  best.safetensors        weights of the epoch with the lowest val loss
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from core.atomic import write_json, write_tensors

log = logging.getLogger(__name__)


def save_weights(model: nn.Module, path: Path) -> None:
    """Write a model's state dict as safetensors, atomically."""
    write_tensors(model.state_dict(), Path(path))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights written by `save_weights` (strict)."""
    model.load_state_dict(load_file(str(path)), strict=True)


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, scalars in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    generator: torch.Generator, info: dict[str, Any]) -> None:
    """Write last.* for the epoch just finished; JSON last so a reader never sees a newer JSON
    pointing at older tensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "last.safetensors")
    tensors, meta = _flatten_optimizer(opt)
    tensors["rng.data"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    write_tensors(tensors, folder / "last.optim.safetensors")
    write_json({**info, "optimizer": meta}, folder / "last.json")


def read_checkpoint_info(folder: Path) -> dict[str, Any] | None:
    """The JSON state of the last checkpoint, or None when there is none (or it is unreadable)."""
    path = Path(folder) / "last.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:  # training starts over instead: slower, never wrong
        log.warning("checkpoint state %s is unreadable (%s); training this model from the start", path, err)
        return None


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's strides.

    safetensors stores contiguous tensors; a channels_last parameter with a contiguous exp_avg
    silently gets wrong updates from the fused kernels, which walk both as flat memory.
    """
    for group in opt.param_groups:
        for param in group["params"]:
            for key, value in opt.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    opt.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def restore_checkpoint(folder: Path, model: nn.Module, opt: torch.optim.Optimizer,
                       generator: torch.Generator, info: dict[str, Any]) -> None:
    """Load model, optimiser and RNG states saved by `save_checkpoint`."""
    folder = Path(folder)
    load_weights(model, folder / "last.safetensors")
    tensors = load_file(str(folder / "last.optim.safetensors"))
    opt.load_state_dict(_unflatten_optimizer(tensors, info["optimizer"]))
    _match_param_layout(opt)
    generator.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
