"""One export, end to end: resolve the model, write each format into a temporary sibling of --out,
reload and verify every file, time the runtimes, write the card, and only then rename into place.

A failed check or a cancel removes the temporary folder, so nothing half-written ever appears under
--out's name, and nothing in the run folder is touched. A format the model cannot take is reported
(with the op or the reason) and the others still export.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from core.atomic import write_json, write_text
from core.data import load_data
from core.export import formats as fmt
from core.export.card import build_card
from core.export.errors import ExportError, FormatUnsupported
from core.export.layout import CARD_FILE, README_FILE, RUN_CONFIG_FILE
from core.export.points import is_export_folder
from core.export.quantize import CALIBRATION_IMAGES, QUANT_SETTINGS, quantize_int8
from core.export.readme import render_readme
from core.export.resolve import Source, load_model, resolve_source
from core.export.timing import measure_runtimes
from core.export.verify import (FP32_BOUND, INT8_MAX_DROP, Check, compare, judge_fp32, judge_int8, logits_of,
                                onnx_runner, split_inputs, torch_runner)
from core.evaluate import logits_metrics
from core.folders import probe_folder
from core.models import count_flops, count_params
from core.train import CancelToken, Event, EventBus

log = logging.getLogger(__name__)

QUANTIZE_CHOICES = ("int8",)


@dataclass
class ExportResult:
    """A finished export: its folder, card, verification checks and the formats it could not write."""

    out: Path
    card: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # format -> why (op or reason)

    @property
    def model(self) -> str:
        return self.card["model"]["name"]


def parse_formats(value: str | Iterable[str] | None, allow_empty: bool = False) -> tuple[str, ...]:
    """--format's comma list (None = all), checked; ExportError names an unknown one.

    An empty list is allowed only with `allow_empty` (int8 alone was asked for).
    """
    if value is None:
        return fmt.FORMATS
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value)]
    items = [v for v in items if v]
    if not items and allow_empty:
        return ()
    if not items:
        raise ExportError("--format", "no format given", f"give a comma list of {', '.join(fmt.FORMATS)}")
    unknown = [v for v in items if v not in fmt.FORMATS]
    if unknown:
        hint = " (int8 is --quantize int8)" if "int8" in unknown else ""
        raise ExportError("--format", f"unknown format '{unknown[0]}'{hint}",
                          f"pick from {', '.join(fmt.FORMATS)} (comma-separated)")
    return tuple(dict.fromkeys(items))


def check_quantize(value: str | None) -> str | None:
    """--quantize: None or 'int8'."""
    if value is None or value == "":
        return None
    if value.lower() not in QUANTIZE_CHOICES:
        raise ExportError("--quantize", f"unknown precision '{value}'", "the only choice is int8")
    return value.lower()


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file or holds anything but (with --overwrite) an earlier export."""
    if out.exists() and not out.is_dir():
        raise ExportError("--out", f"'{out}' is a file", "give a new folder")
    if out.is_dir() and any(out.iterdir()):
        if not is_export_folder(out):
            raise ExportError("--out", f"'{out}' already holds other files", "choose a new or empty folder "
                              "(nothing in it was touched)")
        if not overwrite:
            raise ExportError("--out", f"'{out}' holds an earlier export", "pass --overwrite to replace it, or "
                              "choose a new --out")
    probe_folder(out.parent, "--out")


class _Progress:
    """Stage events for the caller (an EventBus or any callable taking an Event), with a step count."""

    def __init__(self, events: EventBus | Callable[[Event], None] | None, steps: int) -> None:
        self._emit = events.emit if isinstance(events, EventBus) else events
        self.step, self.steps = 0, steps

    def __call__(self, message: str, kind: str = "stage") -> None:
        if kind == "stage":
            self.step += 1
        log.info("export %d/%d: %s", self.step, self.steps, message)
        if self._emit is not None:
            self._emit(Event(kind, "export", step=self.step, message=message,
                             metrics={"step": self.step, "steps": self.steps}))


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished temporary folder to `out` (an earlier export there is replaced)."""
    for path in tmp.iterdir():
        # safetensors writes 0600 files; a shipped folder is read by other users and services
        path.chmod(0o644)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{secrets.token_hex(3)}")
        os.replace(out, old)
    elif out.is_dir():
        out.rmdir()
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old, out)  # put the earlier export back: nothing stored is lost
        raise
    if old is not None:
        _remove(old)


def _remove(folder: Path) -> None:
    """Delete a folder of ours; a failure is logged (the export itself is unaffected)."""
    try:
        shutil.rmtree(folder)
    except OSError as err:
        log.warning("could not remove %s (%s); delete it by hand", folder, err)


def export_model(run: str | Path, out: str | Path, *, model: str | None = None,
                 formats: str | Iterable[str] | None = None, quantize: str | None = None,
                 store_dir: str | Path | None = None, overwrite: bool = False, threads: int | None = None,
                 timing_seconds: float = 2.0, int8_max_drop: float = INT8_MAX_DROP, fp32_bound: float = FP32_BOUND,
                 calibration_images: int = CALIBRATION_IMAGES, cancel: CancelToken | None = None,
                 events: EventBus | Callable[[Event], None] | None = None,
                 command: str | None = None) -> ExportResult:
    """Export one model of a run or sweep into `out`, verified; see the module docstring."""
    quantize = check_quantize(quantize)
    wanted = parse_formats(formats, allow_empty=quantize is not None)
    if not 0.0 <= int8_max_drop <= 1.0:
        raise ExportError("--int8-max-drop", f"must be a share of accuracy in [0, 1], got {int8_max_drop}",
                          "e.g. 0.01 for one point")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ExportError("--threads", f"must be at least 1, got {threads}", "e.g. --threads 2")
    if timing_seconds < 0:
        raise ExportError("--timing-seconds", f"must be >= 0 seconds, got {timing_seconds}", "e.g. 2")
    out = Path(out).expanduser().absolute()
    cancel = cancel or CancelToken()
    source = resolve_source(run, model, Path(store_dir) if store_dir else None)
    check_out(out, overwrite)
    command = command or _command(run, source, wanted, quantize, out)
    # loading, one write per format (the fp32 ONNX too when only int8 ships), verifying, timing, card
    progress = _Progress(events, 4 + len(set(wanted) | ({"onnx"} if quantize else set())) + (1 if quantize else 0))
    tmp = out.with_name(f".{out.name}.partial-{secrets.token_hex(3)}")
    tmp.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="kdlab-export-") as scratch:
            result = _export(source, tmp, Path(scratch), wanted, quantize, threads, timing_seconds,
                             int8_max_drop, fp32_bound, calibration_images, cancel, progress, command)
        cancel.check()
        _publish(tmp, out)
    except BaseException:
        _remove(tmp)  # a failed check, a cancel or Ctrl-C: nothing half-written stays behind
        raise
    result.out = out
    progress(f"exported {source.model.name} to {out}", kind="done")
    return result


def _command(run: str | Path, source: Source, wanted: tuple[str, ...], quantize: str | None, out: Path) -> str:
    parts = ["kdlab export", str(run), "--model", source.model.name, "--format", ",".join(wanted)]
    if quantize:
        parts += ["--quantize", quantize]
    return " ".join(parts + ["--out", str(out)])


def _export(source: Source, tmp: Path, scratch: Path, wanted: tuple[str, ...], quantize: str | None,
            threads: int, timing_seconds: float, int8_max_drop: float, fp32_bound: float, calibration_images: int,
            cancel: CancelToken, progress: _Progress, command: str) -> ExportResult:
    progress(f"loading {source.model.name} and the {source.cfg.data.name} data")
    data = load_data(source.cfg.data, torch.device("cpu"))
    model = load_model(source, data)
    prep = fmt.Preprocessing.of(data)
    x, y = split_inputs(data)
    reference = logits_of(torch_runner(model), x)
    scores = logits_metrics(reference, y)
    measured = {"test_acc": scores["acc"], "test_nll": scores["nll"], "params": count_params(model),
                "flops": count_flops(model, data.in_chans, data.image_size)}
    meta = {"kdlab.model": source.model.name, "kdlab.architecture": source.spec.name,
            "kdlab.source": str(source.folder.absolute())}
    skipped: dict[str, str] = {}
    written: dict[str, list[str]] = {}
    checks: list[Check] = []

    def attempt(name: str, write: Callable[[], list[str]]) -> bool:
        cancel.check()
        progress(f"writing {name}")
        try:
            written[name] = write()
            return True
        except FormatUnsupported as err:  # reported with the result (the CLI's error line, the card's "skipped")
            log.info("%s", err)
            skipped[err.format] = err.problem.split(": ", 1)[-1]
            return False

    if "safetensors" in wanted:
        attempt("safetensors", lambda: fmt.write_safetensors(model, tmp, meta))
    if "timm" in wanted:
        attempt("timm", lambda: fmt.write_timm(model, tmp, prep, list(data.class_names), meta,
                                                          source.spec))
    program, onnx_path = None, None
    if {"onnx", "pt2"} & set(wanted) or quantize:
        try:
            # two images: torch.export specialises a batch of one to a constant, not a dynamic axis
            program = fmt.export_program(model, torch.from_numpy(np.resize(x, (2, *x.shape[1:]))))
        except FormatUnsupported as err:
            for name in ("pt2", "onnx", *(["int8"] if quantize else [])):
                if name in wanted or name == "int8":
                    skipped[name] = err.problem.split(": ", 1)[-1]
    if program is not None and ("onnx" in wanted or quantize):
        onnx_path = (tmp if "onnx" in wanted else scratch) / fmt.ONNX_FILE
        doc = f"kdlab {source.model.name} ({source.spec.name}); input {fmt.INPUT_NAME}: {prep.to_json()['formula']}"
        if not attempt("onnx", lambda: fmt.write_onnx(program, onnx_path, prep, doc)):
            onnx_path = None
            if quantize:
                skipped["int8"] = "needs the fp32 ONNX model, which could not be written"
        elif "onnx" not in wanted:
            written.pop("onnx")  # made only to quantize from; it stays in the scratch folder
    if quantize and onnx_path is not None:
        def write_int8() -> list[str]:
            quantize_int8(onnx_path, tmp / fmt.INT8_FILE, data, calibration_images)
            return [fmt.INT8_FILE]
        attempt("int8", write_int8)
    if program is not None and "pt2" in wanted:
        attempt("pt2", lambda: fmt.write_pt2(program, tmp / fmt.PT2_FILE))

    progress("verifying every file on the test split")
    sessions: dict[str, Any] = {}
    for name in written:
        cancel.check()
        if name == "safetensors":
            fresh = fmt.load_safetensors_model(source.spec, data, tmp / fmt.WEIGHTS_FILE)
            checks.append(judge_fp32(compare(name, "pytorch", "fp32", logits_of(torch_runner(fresh), x),
                                             reference, y), fp32_bound))
        elif name == "timm":
            fresh = fmt.load_timm(tmp)
            checks.append(judge_fp32(compare(name, "timm local-dir", "fp32", logits_of(torch_runner(fresh), x),
                                             reference, y), fp32_bound))
        elif name == "pt2":
            fresh = fmt.load_pt2(tmp / fmt.PT2_FILE)
            checks.append(judge_fp32(compare(name, "torch.export", "fp32", logits_of(torch_runner(fresh), x),
                                             reference, y), fp32_bound))
        elif name == "onnx":
            sessions["fp32"] = fmt.onnx_session(tmp / fmt.ONNX_FILE, threads)
            checks.append(judge_fp32(compare(name, "onnxruntime", "fp32",
                                             logits_of(onnx_runner(sessions["fp32"]), x), reference, y), fp32_bound))
        elif name == "int8":
            sessions["int8"] = fmt.onnx_session(tmp / fmt.INT8_FILE, threads)
            check = compare(name, "onnxruntime", "int8", logits_of(onnx_runner(sessions["int8"]), x), reference, y)
            checks.append(judge_int8(check, scores["acc"], int8_max_drop))
    if "fp32" not in sessions and onnx_path is not None:  # quantized only: still time fp32 beside int8
        sessions = {"fp32": fmt.onnx_session(onnx_path, threads), **sessions}
    cancel.check()
    progress(f"timing PyTorch eager and onnxruntime ({threads} threads)")
    timings = measure_runtimes(model, dict(sorted(sessions.items())), x, threads=threads, seconds=timing_seconds)
    accuracy = {"fp32": scores["acc"], **{c.precision: c.test_acc for c in checks if c.runtime == "onnxruntime"}}
    runtimes = [{**t.to_json(), "test_acc": accuracy.get(t.precision, scores["acc"])} for t in timings]
    progress("writing the model card")
    formats_facts = {name: fmt.file_facts(tmp, files) for name, files in written.items()}
    quant = None if "int8" not in written else {**QUANT_SETTINGS, "calibration_images":
                                                min(calibration_images, len(data.train)),
                                                "calibration_split": "train"}
    if onnx_path is not None and "onnx" in written:
        formats_facts["onnx"]["opset"] = fmt.onnx_opset(onnx_path)
    card = build_card(source, data, measured=measured, formats=formats_facts,
                      checks=[c.to_json() for c in checks], runtimes=runtimes, skipped=skipped,
                      preprocessing=prep.to_json(), quantization=quant, command=command)
    write_text(source.cfg.to_yaml(), tmp / RUN_CONFIG_FILE)
    write_json(card, tmp / CARD_FILE, indent=2)
    write_text(render_readme(card), tmp / README_FILE)
    return ExportResult(tmp, card, checks, skipped)
