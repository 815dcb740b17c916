"""Teacher-logit cache: each teacher's logits on every split, computed once and reused.

A teacher draw is identified by the SHA-256 of its weights file; the cache entry also depends on the
data (name, split sizes, split seed, image size), so a changed teacher or data set misses and
recomputes, and anything else (temperature, alpha, weighting, student, seeds) hits. Entries live in
`<run>/cache/<key>.safetensors` with one tensor per split ("train", "val", "test"), fp32 (N, K), and,
for consistent teaching, `<key>-views-<grid>.safetensors` with the train logits of every view of a
view grid, fp32 (V, N, K).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from core.atomic import write_tensors
from core.data.views import ViewGrid
from core.device import precision_for
from core.train.tasks import predict_logits

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def file_hash(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """First 16 hex digits of the SHA-256 of a file (a checkpoint's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()[:16]


def data_key(data) -> str:
    """What the logits depend on besides the weights: the data set and its split."""
    summary = {k: v for k, v in data.summary().items() if k not in ("device", "streaming")}
    return json.dumps(summary, sort_keys=True)


def cache_key(weights_hash: str, data) -> str:
    """Cache file stem for one teacher draw on one data split."""
    blob = f"{weights_hash}|{data_key(data)}".encode()
    return f"{weights_hash}-{hashlib.sha256(blob).hexdigest()[:8]}"


@dataclass
class CacheStats:
    """How many teacher draws were served from disk (hits) or recomputed (misses)."""

    hits: int = 0
    misses: int = 0


def _load(path: Path, shapes: dict[str, tuple[int, ...]], device: torch.device) -> dict[str, torch.Tensor] | None:
    """The cached tensors if the file is readable and holds the expected shapes, else None."""
    if not path.is_file():
        return None
    try:
        cached = load_file(str(path))
        if all(tuple(cached[name].shape[:len(shape)]) == shape for name, shape in shapes.items()):
            return {name: cached[name].to(device) for name in shapes}
    except Exception as err:  # noqa: BLE001 - an unreadable cache entry is recomputed, never fatal
        log.warning("logit cache entry %s is unreadable (%s: %s); recomputing it", path, type(err).__name__, err)
    return None


def teacher_logits(model: nn.Module, weights_hash: str, data, folder: Path,
                   stats: CacheStats | None = None) -> dict[str, torch.Tensor]:
    """Logits (fp32, on the data's device) of one teacher on every split, from the cache if present."""
    path = Path(folder) / f"{cache_key(weights_hash, data)}.safetensors"
    cached = _load(path, {s: (len(getattr(data, s)),) for s in SPLITS}, data.device)
    if cached is not None:
        if stats:
            stats.hits += 1
        return cached
    precision = precision_for(data.device)
    logits = {}
    for split in SPLITS:
        batches = data.batches(split, 1024, shuffle=False, augment=False)
        logits[split], _ = predict_logits(model, batches, data.device, precision)
    write_tensors(logits, path)
    if stats:
        stats.misses += 1
    return logits


def teacher_view_logits(model: nn.Module, weights_hash: str, data, grid: ViewGrid, folder: Path,
                        stats: CacheStats | None = None) -> torch.Tensor:
    """(V, N_train, K) fp32 logits of one teacher on every view of `grid` of every train image."""
    grid_key = hashlib.sha256(json.dumps(grid.describe(), sort_keys=True).encode()).hexdigest()[:8]
    path = Path(folder) / f"{cache_key(weights_hash, data)}-views-{grid_key}.safetensors"
    cached = _load(path, {"train": (grid.num_views, len(data.train))}, data.device)
    if cached is not None:
        if stats:
            stats.hits += 1
        return cached["train"]
    precision = precision_for(data.device)
    per_view = []
    for v in range(grid.num_views):
        batches = ((grid.apply_all(x, v), y, idx)
                   for x, y, idx in data.batches("train", 1024, shuffle=False, augment=False))
        per_view.append(predict_logits(model, batches, data.device, precision)[0])
    logits = torch.stack(per_view)
    write_tensors({"train": logits}, path)
    if stats:
        stats.misses += 1
    return logits
