"""Starting weights: a local file, or timm's hub (or its local cache) for pretrained=True.

Weights are loaded into a model already built for the data set (its head sized for num_classes,
its first conv for in_chans), instead of timm's `pretrained_cfg_overlay=dict(file=...)`, which
without a matching num_classes silently re-initialises the head and hides mismatches.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import safetensors.torch
import torch
from timm.models import adapt_input_conv
from torch import Tensor, nn

from core.errors import ModelError

log = logging.getLogger(__name__)

MIN_MATCH = 0.5  # below this share of matching tensors the file is for another architecture
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
_FIX = "give a local .safetensors/.pth file saved from this architecture"


@dataclass(frozen=True)
class LoadReport:
    """What a weights load did: tensors copied, of how many in the backbone, head kept or re-made."""

    loaded: int
    matched_body: int
    body_total: int
    head_reset: bool


def shorten(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters at a sentence end (or a word, with '...'), never mid-word."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    if cut >= limit // 2:
        return text[:cut + 1]
    return text[:text.rfind(" ", 0, limit - 3)].rstrip(" ,;:") + "..."


def one_line(err: BaseException) -> str:
    """The cause of an exception in one line, short enough for a one-line message."""
    text = str(err).strip()
    # torch's weights_only refusal opens with a long generic paragraph; the cause is the global it met
    unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsupported:
        return (f"it stores a {unsupported.group(1)} object, which a weights-only load refuses to unpickle, "
                "so nothing in it was run")
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
    line = (text.splitlines() or [""])[0].strip()
    return shorten(line) or type(err).__name__


def _read_any(path: Path) -> Any:
    """Read a safetensors or torch file, trying the format the suffix suggests first."""
    def read_safetensors() -> Any:
        return safetensors.torch.load_file(str(path), device="cpu")

    def read_torch() -> Any:
        # timm's train script stores its argparse.Namespace beside the weights; it is plain data
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)

    readers = [read_safetensors, read_torch]
    if path.suffix.lower() != ".safetensors":
        readers.reverse()
    try:
        return readers[0]()
    except Exception as first:  # noqa: BLE001 - any reader failure is reported as one line
        try:
            return readers[1]()
        except Exception:  # noqa: BLE001
            raise first from None


def _unwrap(obj: Any) -> dict[str, Tensor]:
    """The tensor mapping inside a checkpoint dict, with wrapper prefixes removed."""
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        return {}
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, Tensor):
            continue
        key = str(key)
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def read_state_dict(path: str | os.PathLike[str], field: str) -> dict[str, Tensor]:
    """Tensors of a safetensors file or a (timm/torch) checkpoint, or a one-line ModelError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(field, f"weights file '{path}' does not exist", _FIX)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ModelError(field, f"weights file '{path}' is {what}", _FIX)
    try:
        obj = _read_any(path)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated or foreign files all land here
        raise ModelError(field, f"'{path.name}' cannot be read as safetensors or a torch checkpoint "
                         f"({one_line(err)})", "check that the file is complete, or re-save "
                         "model.state_dict() with safetensors or torch.save") from None
    state_dict = _unwrap(obj)
    if not state_dict:
        raise ModelError(field, f"'{path.name}' holds no tensors", _FIX)
    check_finite(state_dict, field, path.name)
    return state_dict


def check_finite(state_dict: Mapping[str, Tensor], field: str, name: str) -> None:
    """Refuse weights holding NaN or inf: training from them diverges at its first step."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} other tensor(s)" if len(bad) > 1 else ""
        raise ModelError(field, f"'{name}' holds non-finite values (NaN or inf) in {bad[0]}{more}",
                         "re-save the weights of a model that did not diverge")


def _cfg_names(model: nn.Module, key: str) -> tuple[str, ...]:
    """Module names a timm pretrained cfg lists under key ('classifier', 'first_conv')."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    value = cfg.get(key) if isinstance(cfg, Mapping) else None
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _filter(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Apply the model module's own checkpoint filter (key renames, ViT pos-embed resampling)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state_dict
    try:
        out = filter_fn(dict(state_dict), model)
    except Exception as err:  # noqa: BLE001 - a filter for foreign layouts may choke on ours; use it raw
        log.debug("timm's checkpoint filter for %s failed (%s: %s); loading the state dict as it is",
                  type(model).__name__, type(err).__name__, err)
        return state_dict
    return out if isinstance(out, dict) and out else state_dict


def _adapt_first_convs(model: nn.Module, state_dict: dict[str, Tensor], own: Mapping[str, Tensor]) -> None:
    """Re-make the stem conv weights for the model's input channels (e.g. RGB file, grey data)."""
    for name in _cfg_names(model, "first_conv"):
        key = f"{name}.weight"
        if key not in state_dict or key not in own:
            continue
        src, dst = state_dict[key], own[key]
        if src.ndim == 4 and dst.ndim == 4 and src.shape[1] != dst.shape[1] and src.shape[0] == dst.shape[0]:
            try:
                state_dict[key] = adapt_input_conv(dst.shape[1], src.float(), base_chans=src.shape[1])
            except (ValueError, NotImplementedError) as err:
                # left mismatched: it is then skipped and counted as not loaded
                log.debug("cannot adapt %s from %d to %d input channels: %s", key, src.shape[1], dst.shape[1], err)


def load_state_dict_into(model: nn.Module, state_dict: dict[str, Tensor], field: str,
                         source: str) -> LoadReport:
    """Copy matching tensors into model; head tensors of another shape are left freshly made."""
    state_dict = _filter(model, state_dict)
    own = model.state_dict()
    _adapt_first_convs(model, state_dict, own)
    heads = _cfg_names(model, "classifier")

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    take = {k: v for k, v in state_dict.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    # BN step counters are often left out of published files and carry no learned value
    body = [k for k in own if not is_head(k) and not k.endswith("num_batches_tracked")]
    matched = sum(k in take for k in body)
    if not body or matched / len(body) < MIN_MATCH:
        raise ModelError(field, f"'{source}' does not fit this architecture: {matched} of {len(body)} "
                         "tensors match by name and shape", _FIX + " (same model name, width and depth)")
    if matched < len(body):
        log.warning("%s: %d of %d backbone tensors loaded from %s; the rest keep their fresh init",
                    field, matched, len(body), source)
    model.load_state_dict(take, strict=False)
    head_reset = any(is_head(k) for k in own) and not any(is_head(k) for k in take)
    return LoadReport(loaded=len(take), matched_body=matched, body_total=len(body), head_reset=head_reset)


def load_weights_file(model: nn.Module, path: str | os.PathLike[str], field: str) -> LoadReport:
    """Read a local weights file and load it into model (head re-made, stem adapted)."""
    state_dict = read_state_dict(path, field)
    return load_state_dict_into(model, state_dict, field, Path(path).name)


# --- pretrained=True: the hub, or what it left in the local caches -------------------------------

def cached_pretrained_file(cfg: Mapping[str, Any]) -> Path | None:
    """A weights file for this pretrained cfg already in the HF or torch-hub cache, if any."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = str(hub_id).partition("@")
            names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors",
                                                                                   "pytorch_model.bin"]
            for name in names:
                found = try_to_load_from_cache(repo, name, revision=revision or None)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    url = cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if candidate.is_file():
            return candidate
    return None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def offline_by_env() -> bool:
    """True when KDLAB_OFFLINE or HF_HUB_OFFLINE asks not to touch the network."""
    return _truthy("KDLAB_OFFLINE") or _truthy("HF_HUB_OFFLINE")


def hub_host(cfg: Mapping[str, Any]) -> str | None:
    """The host timm would download this cfg's weights from."""
    if cfg.get("hf_hub_id"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        return urlparse(endpoint).hostname
    if cfg.get("url"):
        return urlparse(cfg["url"]).hostname
    return None


def host_reachable(host: str, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to host:443 opens within timeout_s.

    The hub client retries for ~45 s per file when offline, so a quick probe decides first; it
    runs in a daemon thread because DNS lookups ignore socket timeouts.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    return bool(result and result[0])
