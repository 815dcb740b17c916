"""The export formats: how each is written and how each is read back safely, in a fresh object.

  safetensors  model.safetensors: the state dict alone (rebuild the architecture with kdlab or timm)
  timm         config.json + model.safetensors in timm's own hub layout (`save_config_for_hf`), so
               `timm.create_model("local-dir:DIR", pretrained=True)` rebuilds and loads it offline
  onnx         model.onnx: the torch.export-based exporter (torch.onnx.export(dynamo=True)) from the
               same ExportedProgram as pt2, dynamic batch axis `batch`, preprocessing in the metadata
  pt2          model.pt2: `torch.export.save` of that program, written without example inputs (those
               would be a torch.save pickle) and read back only after checking that nothing in it is one

Nothing here writes or reads a pickle: weights go through safetensors, ONNX is protobuf, and the pt2
reader refuses an archive holding any pickled payload before torch.export.load sees it.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from core.export.errors import ExportError, FormatUnsupported, failing_op, short_reason
from core.export.layout import (BATCH_AXIS, FORMATS, INPUT_NAME, INT8_FILE, ONNX_FILE, OUTPUT_NAME,  # noqa: F401
                                PT2_FILE, TIMM_CONFIG_FILE, WEIGHTS_FILE)

if TYPE_CHECKING:
    from core.data import DataBundle
    from core.models import ModelSpec

log = logging.getLogger(__name__)
# Keys of timm's pretrained_cfg that describe the source checkpoint (ImageNet weights, licences,
# papers), not this model, which was trained from scratch on the run's data.
_SOURCE_KEYS = ("tag", "hf_hub_id", "url", "file", "license", "origin_url", "paper_ids", "paper_name", "notes",
                "description", "source")


@dataclass(frozen=True)
class Preprocessing:
    """What a caller does to uint8 images before the model: exactly what core.data's batches do."""

    in_chans: int
    height: int
    width: int
    mean: tuple[float, ...]   # per channel, 0-1 scale (the train split's)
    std: tuple[float, ...]
    resize: str = "bilinear, antialiased (torch.nn.functional.interpolate), to height x width"

    def to_json(self) -> dict[str, Any]:
        """The card's preprocessing entry (layout, dtype, scale, mean, std, resize)."""
        return {"layout": "NCHW", "dtype": "float32", "in_chans": self.in_chans, "height": self.height,
                "width": self.width, "scale": "x / 255 (uint8 0-255 to 0-1)", "mean": list(self.mean),
                "std": list(self.std), "formula": "(x / 255 - mean[c]) / std[c] per channel c",
                "resize": self.resize}

    @classmethod
    def of(cls, data: DataBundle) -> "Preprocessing":
        """The preprocessing of a loaded data set (its shape and train-split statistics)."""
        return cls(data.in_chans, data.image_size, data.image_size, tuple(data.mean), tuple(data.std))


# -- writing ----------------------------------------------------------------------------------

def write_safetensors(model: nn.Module, dest: Path, metadata: dict[str, str]) -> list[str]:
    """model.safetensors: the state dict (contiguous CPU copies) with string metadata."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(dest / WEIGHTS_FILE), metadata={"format": "pt", **metadata})
    return [WEIGHTS_FILE]


def write_timm(model: nn.Module, dest: Path, prep: Preprocessing, class_names: list[str],
               metadata: dict[str, str], spec: ModelSpec | None = None) -> list[str]:
    """config.json (timm's save_config_for_hf, source-checkpoint keys dropped) beside model.safetensors."""
    from timm.models._hub import save_config_for_hf
    arch = model.pretrained_cfg.get("architecture") if hasattr(model, "pretrained_cfg") else None
    if arch is None or not hasattr(model, "_model_args"):
        # kdlab's multipliers for the EfficientNet/MobileNet families call timm's private _gen_* builder
        # (core.models.sizing), whose channel_multiplier the public entry point fixes itself
        size = "" if spec is None or not spec.scaled else f" at width {spec.width}, depth {spec.depth}"
        raise FormatUnsupported("timm", f"'{arch or model.__class__.__name__}'{size} is built by kdlab's width/depth "
                                "multiplier, which timm.create_model cannot take from config.json")
    data_config = {"input_size": (prep.in_chans, prep.height, prep.width), "mean": prep.mean, "std": prep.std,
                   "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    config_path = dest / TIMM_CONFIG_FILE
    try:
        save_config_for_hf(model, str(config_path), data_config=data_config)
    except (ValueError, TypeError, KeyError) as err:
        raise FormatUnsupported("timm", f"timm cannot describe '{arch}' in config.json ({short_reason(err)})") from None
    cfg = json.loads(config_path.read_text())
    for key in _SOURCE_KEYS:
        cfg["pretrained_cfg"].pop(key, None)
    cfg["pretrained_cfg"]["tag"] = "kdlab"
    cfg["in_chans"] = prep.in_chans  # informational at the top level, beside num_classes (timm reads model_args)
    cfg["label_names"] = list(class_names)
    config_path.write_text(json.dumps(cfg, indent=2))
    _check_timm_rebuild(model, dest, arch)
    if not (dest / WEIGHTS_FILE).is_file():
        write_safetensors(model, dest, metadata)
    return [TIMM_CONFIG_FILE, WEIGHTS_FILE]


def _check_timm_rebuild(model: nn.Module, dest: Path, arch: str) -> None:
    """FormatUnsupported unless timm builds, from config.json alone, an architecture with these tensors."""
    import timm
    try:
        rebuilt = timm.create_model(f"local-dir:{dest}", pretrained=False, device="meta")
    except Exception as err:  # noqa: BLE001 - timm raises many types for arguments it cannot take
        raise FormatUnsupported("timm", f"timm cannot rebuild '{arch}' from config.json "
                                f"({short_reason(err)})") from None
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if ours != theirs:
        differ = next((k for k in ours if theirs.get(k) != ours[k]), next(iter(set(theirs) - set(ours)), "?"))
        raise FormatUnsupported("timm", f"timm.create_model('{arch}', **config.json's model_args) builds another "
                                f"architecture (first difference: {differ} {ours.get(differ)} vs "
                                f"{theirs.get(differ)}): kdlab's width/depth multiplier for this family is not a "
                                "timm argument")


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """torch.export of the eval-mode model with a dynamic batch axis (FormatUnsupported names the op)."""
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=65536)
    try:
        with torch.no_grad():
            return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    except Exception as err:  # noqa: BLE001 - torch.export raises many types; the op is what matters
        op = failing_op(err)
        what = f"torch.export cannot trace op {op}" if op else f"torch.export fails ({short_reason(err)})"
        raise FormatUnsupported("pt2", what, "drop pt2 and onnx from --format (both come from torch.export); "
                                "safetensors and timm still export") from None


def write_onnx(program: torch.export.ExportedProgram, path: Path, prep: Preprocessing, doc: str) -> list[str]:
    """model.onnx from the exported program: dynamic `batch` axis, preprocessing in metadata_props."""
    try:
        onnx_program = torch.onnx.export(program, (), dynamo=True, input_names=[INPUT_NAME],
                                         output_names=[OUTPUT_NAME], verbose=False)
    except Exception as err:  # noqa: BLE001 - the exporter wraps every failure; the op is in its cause
        op = failing_op(err)
        what = f"the ONNX exporter has no conversion for op {op}" if op else \
            f"the ONNX exporter fails ({short_reason(err)})"
        raise FormatUnsupported("onnx", what) from None
    batch = onnx_program.model.graph.inputs[0].shape[0]
    if not isinstance(batch, int) and str(batch) != BATCH_AXIS:
        onnx_program.rename_axes({batch: BATCH_AXIS})  # torch.export names the symbol s0, s77, ...
    proto = onnx_program.model_proto
    proto.doc_string = doc
    meta = {"kdlab.layout": "NCHW float32", "kdlab.scale": "x / 255", "kdlab.mean": json.dumps(list(prep.mean)),
            "kdlab.std": json.dumps(list(prep.std)),
            "kdlab.input_size": json.dumps([prep.in_chans, prep.height, prep.width])}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    import onnx
    onnx.save(proto, str(path))
    return [path.name]


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset of an ONNX file."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def write_pt2(program: torch.export.ExportedProgram, path: Path) -> list[str]:
    """model.pt2 via torch.export.save, without example inputs (torch.export would pickle them)."""
    program.example_inputs = None  # public setter; an empty sample-inputs entry is written instead
    torch.export.save(program, str(path))
    return [path.name]


# -- reading back -----------------------------------------------------------------------------

def load_safetensors_model(spec: ModelSpec, data: DataBundle, path: Path) -> nn.Module:
    """A fresh kdlab build of `spec` for the data set with the weights of a safetensors file, in eval mode."""
    from core.models import build_model
    from core.train.checkpoint import load_weights
    model = build_model(spec, data.num_classes, data.in_chans, image_size=data.image_size, field="--model")
    load_weights(model, path)
    return model.eval()


def load_timm(folder: Path) -> nn.Module:
    """timm.create_model('local-dir:folder', pretrained=True): what a user of the folder runs."""
    import timm
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    return model.eval()


_PT2_META = ("archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id")


def _unsafe_pt2_entry(z: zipfile.ZipFile) -> str | None:
    """The first member of a pt2 archive that is, or may be, a pickle; None when there is none.

    Allowed: the archive's small metadata files, JSON (the graph, the payload configs), raw tensor
    payloads their config marks as not pickled, and sample inputs that are empty or load with
    torch.load(weights_only=True) (torch.export.load tries that first and would otherwise fall back
    to an unrestricted unpickler).
    """
    raw: set[str] = set()  # raw tensor payloads, by archive path
    names = z.namelist()
    for name in names:
        if name.endswith("_config.json") and ("/data/weights/" in name or "/data/constants/" in name):
            folder = name.rsplit("/", 1)[0]
            for meta in json.loads(z.read(name)).get("config", {}).values():
                path = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or not path.startswith(("weight_", "tensor_")):
                    return f"{folder}/{path} (a pickled or custom object)"
                raw.add(f"{folder}/{path}")
    for name in names:
        if name.endswith(("/", ".json")) or name.endswith(_PT2_META) or name in raw:
            continue
        if "/data/sample_inputs/" in name:
            blob = z.read(name)
            if blob:
                try:
                    torch.load(io.BytesIO(blob), weights_only=True)
                except Exception as err:  # noqa: BLE001 - any failure means the unrestricted fallback
                    return f"{name} ({type(err).__name__})"
            continue
        return name
    return None


def load_pt2(path: Path) -> nn.Module:
    """The program of a .pt2 file as a module, after refusing any archive that holds a pickle."""
    try:
        with zipfile.ZipFile(path) as z:
            unsafe = _unsafe_pt2_entry(z)
    except (OSError, zipfile.BadZipFile, ValueError) as err:
        raise ExportError("pt2", f"'{path}' is not a readable pt2 archive ({type(err).__name__})",
                          "export it again") from None
    if unsafe is not None:
        raise ExportError("pt2", f"'{path}' holds a pickled or unknown payload ({unsafe}); kdlab never loads one",
                          "export it again with kdlab export")
    return torch.export.load(str(path)).module()


def onnx_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads and no spinning between runs.

    Spinning threads would keep both cores busy after each call and slow whatever runs next (the
    interleaved PyTorch timing, or the rest of a serving process).
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's concern
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def file_facts(folder: Path, files: list[str]) -> dict[str, Any]:
    """{'files': [...], 'bytes': total, 'sha256': {file: hex}} of files in folder."""
    import hashlib
    digests, total = {}, 0
    for name in files:
        digest = hashlib.sha256()
        with open(folder / name, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        digests[name] = digest.hexdigest()
        total += (folder / name).stat().st_size
    return {"files": list(files), "bytes": total, "sha256": digests}
