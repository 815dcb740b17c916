"""Post-training int8: onnxruntime static quantization of the fp32 ONNX model, calibrated on train images.

Why onnxruntime's `quantize_static` and not PyTorch's PT2E flow: torch 2.14 no longer ships
`torch.ao.quantization.quantize_pt2e` (it moved to the separate torchao package), and a PT2E
program runs its quantize/dequantize pairs as separate fp32 ops in eager mode: it is only fast once
lowered by torch.compile/inductor, which needs a C++ toolchain on the serving machine and gives no
file another program can load. The ONNX int8 model is one file that runs in the same runtime as
the fp32 one, so its speed and accuracy can be compared directly (BENCHMARKS.md has the figures).

Settings: QDQ format (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into int8
kernels), uint8 activations with int8 weights (the u8s8 pair the x86 VNNI dot-product instructions
take), per-channel weight scales (the notes' advice for small and depthwise convolutions) and
MinMax calibration over a seeded sample of train images (never val or test).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.export.errors import FormatUnsupported, short_reason
from core.export.formats import INPUT_NAME

if TYPE_CHECKING:
    from core.data import DataBundle

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 512   # a few hundred train images settle MinMax ranges of a small CNN
CALIBRATION_BATCH = 64
QUANT_SETTINGS = {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": True,
                  "calibration": "MinMax"}


def calibration_rows(n_train: int, count: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """Indices of the train images used for calibration: a seeded sample, so every class shows up."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_train, generator=gen)[:min(count, n_train)].sort().values


def calibration_batches(data: DataBundle, count: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Normalised float32 NCHW train batches, exactly as the model saw them without augmentation."""
    rows = calibration_rows(len(data.train), count)
    x = data.normalize(data.train.x[rows.to(data.train.x.device)]).cpu().numpy().astype(np.float32)
    return [np.ascontiguousarray(x[i:i + CALIBRATION_BATCH]) for i in range(0, len(x), CALIBRATION_BATCH)]


def quantize_int8(fp32_path: Path, out_path: Path, data: DataBundle, count: int = CALIBRATION_IMAGES) -> None:
    """Write the int8 QDQ model of `fp32_path` to `out_path`, calibrated on `count` train images."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """Hands onnxruntime one normalised train batch per call, then None."""

        def __init__(self, batches: list[np.ndarray]) -> None:
            self._batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="kdlab-int8-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            # shape inference + constant folding first, as onnxruntime's quantization guide asks
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(str(prepared), str(out_path), Reader(calibration_batches(data, count)),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as err:  # noqa: BLE001 - the quantiser raises many types on graphs it cannot take
            raise FormatUnsupported("int8", f"onnxruntime's static quantization fails ({short_reason(err)})",
                                    "drop --quantize int8; the fp32 formats export") from None
