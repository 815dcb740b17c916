"""What can go wrong in an export: bad input, a format a model cannot take, a check that failed.

Every one is a KdlabError, so the CLI prints one line (field: problem; fix) and exits 2.
"""

from __future__ import annotations

import re

from core.errors import KdlabError


class ExportError(KdlabError):
    """Bad export input: an unknown run, model or format, a run without students, a busy --out."""


class FormatUnsupported(ExportError):
    """A model cannot be written in one format (the op or the reason named); the others still export."""

    def __init__(self, fmt: str, problem: str, fix: str = "") -> None:
        self.format = fmt
        super().__init__("--format", f"{fmt}: {problem}",
                         fix or f"drop {fmt} from --format; the other formats export")


class VerificationFailed(ExportError):
    """A written file, reloaded, does not reproduce the PyTorch model within its bound."""


# torch.export / the ONNX exporter name the failing op in one of these shapes
_OP_PATTERNS = (
    re.compile(r"OpOverload\(op='([\w.]+)'"),          # No ONNX function found for <OpOverload(op='prims.erf_inv'...
    re.compile(r"torch\.ops\.([\w]+\.[\w]+)"),           # target=torch.ops.aten.kthvalue.default
    re.compile(r"\b((?:aten|prims)(?:::|\.)\w+)"),         # aten::foo / aten.foo
)


def failing_op(err: BaseException) -> str | None:
    """The op an exporter names in its error chain (e.g. 'prims.erf_inv'), or None when it names none."""
    seen: set[int] = set()
    current: BaseException | None = err
    texts = []
    while current is not None and id(current) not in seen:  # the op is often only in a __cause__
        seen.add(id(current))
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    text = "\n".join(texts)
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def short_reason(err: BaseException, limit: int = 160) -> str:
    """The first meaningful line of an exception, for a one-line message."""
    for line in str(err).splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()  # the ONNX exporter colours its text
        if line and not line.startswith(("#", "-")):
            text = f"{type(err).__name__}: {line}"
            return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
    return type(err).__name__
