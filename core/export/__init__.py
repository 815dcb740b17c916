"""Ship a model: export a run's student (or any of its models) in verified formats with a model card.

    from core.export import export_model, runtime_points
    result = export_model("runs/demo", "ship/demo", quantize="int8")   # default: the val-best KD student
    result.card["verification"], result.skipped
    runtime_points("ship/demo")   # onnxruntime fp32/int8 points for the Trade-off plot

Formats: safetensors, timm (hub folder for `timm.create_model("local-dir:DIR", pretrained=True)`),
onnx (onnxruntime-checked), pt2 (torch.export); `quantize="int8"` adds onnxruntime static int8.
Modules: layout (names), resolve (RUN/--model to a model), formats, quantize, verify, timing, card,
readme, export (the orchestration), points (what pages read back), cli. The job manager queues
exports as core.jobs.ExportJob.

Names are imported on first use, so reading cards and points (a page) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from core.export.layout import FORMATS

_WHERE = {
    "ExportError": "errors", "FormatUnsupported": "errors", "VerificationFailed": "errors",
    "ExportResult": "export", "check_out": "export", "export_model": "export", "parse_formats": "export",
    "is_export_folder": "points", "read_card": "points", "runtime_points": "points", "zip_folder": "points",
    "model_names": "resolve", "resolve_source": "resolve",
}

__all__ = ["FORMATS", *sorted(_WHERE)]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'core.export' has no attribute '{name}'")
    return getattr(importlib.import_module(f"core.export.{_WHERE[name]}"), name)
