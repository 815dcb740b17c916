"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write tensors as one safetensors file (CPU copies), via a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    """Write text via a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(obj: Any, path: Path, indent: int = 1) -> None:
    """Write obj as JSON via a temporary file and a rename."""
    write_text(json.dumps(obj, indent=indent), path)
