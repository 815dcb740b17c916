"""What pages read back from an export folder: its card, its runtime points, the folder as a zip."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from core.export.errors import ExportError
from core.export.layout import CARD_FILE


def read_card(folder: str | Path) -> dict[str, Any]:
    """card.json of an export folder; ExportError when there is none or it is not a kdlab card."""
    path = Path(folder) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except OSError as err:
        raise ExportError("export folder", f"'{path}' cannot be read ({err.strerror or err})",
                          "give the --out folder of a `kdlab export`") from None
    except ValueError as err:
        raise ExportError("export folder", f"'{path}' is not valid JSON ({err})", "export the model again") from None
    if not isinstance(card, dict) or "kdlab_export" not in card:
        raise ExportError("export folder", f"'{path}' is not a kdlab model card", "export the model again")
    return card


def is_export_folder(folder: str | Path) -> bool:
    """True when folder holds a kdlab export (a card.json with kdlab_export)."""
    try:
        card = json.loads((Path(folder) / CARD_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and "kdlab_export" in card


def runtime_points(export_dir: str | Path, include_eager: bool = False) -> list[dict[str, Any]]:
    """One Trade-off point per exported runtime and precision (onnxruntime fp32 and int8; eager if asked).

    Each point: method (e.g. `student/kd/s1 (onnxruntime int8)`), kind `export`, runtime, precision,
    test_acc (as verified on the test split), latency_ms (batch 1), throughput (images/s at `batch`),
    batch, params, flops, threads, device.
    """
    card = read_card(export_dir)
    model = card["model"]
    points = []
    for r in card.get("runtimes", []):
        if r["runtime"] == "pytorch-eager" and not include_eager:
            continue
        points.append({"method": f"{model['name']} ({r['runtime']} {r['precision']})", "kind": "export",
                       "model": model["name"], "runtime": r["runtime"], "precision": r["precision"],
                       "test_acc": r.get("test_acc"), "latency_ms": r["latency_ms"], "throughput": r["throughput"],
                       "batch": r["batch"], "params": model.get("params"), "flops": model.get("flops"),
                       "threads": r["threads"], "device": r["device"]})
    return points


def zip_folder(folder: str | Path) -> bytes:
    """The export folder as zip bytes (for a download button), files under the folder's name."""
    folder = Path(folder)
    read_card(folder)  # only a finished export is offered for download
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, arcname=str(Path(folder.name) / path.relative_to(folder)))
    return buffer.getvalue()
