"""Every exported file, reloaded in a fresh object, against the PyTorch model on the run's test split.

fp32 formats must reproduce the PyTorch logits within FP32_BOUND (max |difference| over every test
example and class) and give the same argmax; int8 is judged by its test accuracy against fp32's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn

from core.evaluate import logits_metrics
from core.export.errors import VerificationFailed
from core.export.formats import INPUT_NAME
from core.export.layout import INT8_MAX_DROP

if TYPE_CHECKING:
    from core.data import DataBundle

log = logging.getLogger(__name__)

FP32_BOUND = 1e-4        # max |logit difference| an fp32 format may show against PyTorch (logit units)
BATCH = 256              # images per call while verifying

Runner = Callable[[np.ndarray], np.ndarray]   # float32 NCHW batch -> float32 logits


@dataclass
class Check:
    """One format's verification: figures, its bound and whether it passed."""

    format: str
    runtime: str
    precision: str
    examples: int
    test_acc: float
    test_nll: float
    argmax_agreement: float              # share of test images with the PyTorch model's argmax
    max_abs_logit_diff: float
    bound: float | None                  # fp32: FP32_BOUND; int8: None (judged by accuracy)
    acc_change: float | None = None      # int8: its test accuracy minus fp32's
    max_drop: float | None = None        # int8: the largest drop allowed
    passed: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """One line: `onnx (onnxruntime fp32): max |dlogit| 2.4e-07 <= 1e-04, argmax 100.0%, acc 0.9750`."""
        head = f"{self.format} ({self.runtime} {self.precision}): "
        if self.bound is not None:
            return (head + f"max |dlogit| {self.max_abs_logit_diff:.1e} {'<=' if self.passed else '>'} "
                    f"{self.bound:.0e}, argmax {100 * self.argmax_agreement:.1f}%, acc {self.test_acc:.4f}")
        return (head + f"acc {self.test_acc:.4f} ({100 * (self.acc_change or 0.0):+.2f} points vs fp32, "
                f"allowed -{100 * (self.max_drop or 0.0):.2f}), argmax {100 * self.argmax_agreement:.1f}%")


def split_inputs(data: DataBundle) -> tuple[np.ndarray, torch.Tensor]:
    """The test split normalised as the model saw it (float32 NCHW, contiguous) and its labels."""
    x = data.normalize(data.test.x).cpu().contiguous().numpy().astype(np.float32, copy=False)
    return x, data.test.y.cpu().long()


def torch_runner(model: nn.Module) -> Runner:
    """A runner over a PyTorch module: fp32, eval, inference_mode, on the CPU."""
    try:
        model.eval()
    except NotImplementedError:
        log.debug("an exported program's module refuses eval(); it was traced in eval mode already")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()
    return run


def onnx_runner(session: Any) -> Runner:
    """A runner over an onnxruntime session taking `images` and returning `logits`."""
    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: x})[0]
    return run


def logits_of(run: Runner, x: np.ndarray, batch: int = BATCH) -> torch.Tensor:
    """(N, K) float32 logits of every row of x, `batch` rows per call."""
    parts = [run(np.ascontiguousarray(x[i:i + batch])) for i in range(0, len(x), batch)]
    return torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))


def compare(fmt: str, runtime: str, precision: str, logits: torch.Tensor, reference: torch.Tensor,
            y: torch.Tensor) -> Check:
    """Figures of `logits` against the reference logits and the labels (no judgement yet)."""
    if logits.shape != reference.shape:
        raise VerificationFailed("--format", f"{fmt}: the reloaded model gives logits of shape "
                                 f"{tuple(logits.shape)}, PyTorch {tuple(reference.shape)}",
                                 "report this as a kdlab bug; nothing was written")
    scores = logits_metrics(logits, y)
    diff = (logits.double() - reference.double()).abs()
    finite = bool(torch.isfinite(diff).all())
    return Check(format=fmt, runtime=runtime, precision=precision, examples=int(len(y)), test_acc=scores["acc"],
                 test_nll=scores["nll"],
                 argmax_agreement=float((logits.argmax(1) == reference.argmax(1)).double().mean()),
                 max_abs_logit_diff=float(diff.max()) if finite else float("inf"), bound=None)


def judge_fp32(check: Check, bound: float = FP32_BOUND) -> Check:
    """Pass when max |logit difference| <= bound and every argmax agrees; else VerificationFailed."""
    check.bound = bound
    check.passed = check.max_abs_logit_diff <= bound and check.argmax_agreement == 1.0
    if not check.passed:
        raise VerificationFailed("--format", f"{check.format} does not reproduce the PyTorch model: "
                                 f"{check.text()}", "nothing was written under --out; report this with the "
                                 "model name (a runtime or exporter bug)")
    return check


def judge_int8(check: Check, fp32_acc: float, max_drop: float = INT8_MAX_DROP) -> Check:
    """Pass when int8's test accuracy is at most `max_drop` below fp32's; else VerificationFailed."""
    check.acc_change = check.test_acc - fp32_acc
    check.max_drop = max_drop
    # 1e-9: the accuracies are ratios of counts; their float rounding must not fail an exact bound
    check.passed = check.acc_change >= -max_drop - 1e-9
    if not check.passed:
        raise VerificationFailed("--quantize", f"int8 loses {-100 * check.acc_change:.2f} points of test "
                                 f"accuracy ({check.test_acc:.4f} vs fp32 {fp32_acc:.4f}; allowed "
                                 f"{100 * max_drop:.2f})", "export without --quantize, or allow more with "
                                 "--int8-max-drop; nothing was written under --out")
    return check
