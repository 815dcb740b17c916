"""The model card's facts (card.json): what the model is, where it came from, how well and how fast it runs.

Every figure of a run is copied from its results.json (core.results), never recomputed, so the card
and the run agree; what a sweep does not store per model (a trial seed's test scores, its teachers'
scores) is measured at export time and marked so. README.md is rendered from the same dict
(core.export.readme).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import logging
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.evaluate import logits_metrics
from core.export.layout import RUN_CONFIG_FILE
from core.export.resolve import Source, teacher_labels
from core.models import ModelSpec, build_model, count_flops, count_params
from core.prepare import teacher_spec
from core.results import RunResults
from core.train.checkpoint import load_weights

if TYPE_CHECKING:
    from core.config import RunConfig
    from core.data import DataBundle, Split

log = logging.getLogger(__name__)

CARD_VERSION = 1
LIBRARIES = ("torch", "timm", "onnx", "onnxruntime", "onnxscript", "safetensors", "numpy", "kdlab")


def sha256_file(path: Path) -> str:
    """Full SHA-256 (hex) of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def split_hash(split: Split) -> str:
    """SHA-256 of a split as kdlab loads it: its uint8 images (N, C, H, W, C order), then int64 labels."""
    digest = hashlib.sha256()
    digest.update(split.x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(split.y.detach().cpu().long().contiguous().numpy().tobytes())
    return digest.hexdigest()


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries an export depends on, plus Python's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def data_facts(data: DataBundle, cfg: RunConfig) -> dict[str, Any]:
    """The data set: name, shape, classes, and the size and SHA-256 of each split."""
    return {"name": data.name, "config": cfg.data.model_dump(mode="json"), "num_classes": data.num_classes,
            "class_names": list(data.class_names), "in_chans": data.in_chans, "image_size": data.image_size,
            "splits": {name: {"images": len(getattr(data, name)), "sha256": split_hash(getattr(data, name))}
                       for name in ("train", "val", "test")},
            "split_hash": "SHA-256 of the split's uint8 images (N, C, H, W in C order) followed by its int64 labels"}


def _row(results: RunResults, method: str) -> dict[str, Any] | None:
    row = next((r for r in results.comparison if r.method == method), None)
    return None if row is None else row.model_dump(mode="json")


def _kd_method(results: RunResults, round_index: int | None) -> str:
    rounds = sorted({s.round or 1 for s in results.students if s.kind == "kd"})
    return "student/kd" if len(rounds) <= 1 else f"student/kd-round{round_index or rounds[-1]}"


def _seeds(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"method": row["method"], "n": row["seeds"], "test_acc_mean": row["test_acc_mean"],
            "test_acc_std": row["test_acc_std"], "test_nll_mean": row["test_nll_mean"],
            "test_nll_std": row["test_nll_std"]}


def _teacher(folder: Path, entry: dict[str, Any]) -> dict[str, Any]:
    path = folder / entry["weights"]
    entry["weights_sha256"] = sha256_file(path) if path.is_file() else None
    if entry["weights_sha256"] and entry.get("weights_hash") and not entry["weights_sha256"].startswith(
            entry["weights_hash"]):
        log.warning("teacher %s: weights file changed since the run (hash %s, run recorded %s)",
                    entry["name"], entry["weights_sha256"][:16], entry["weights_hash"])
    return entry


def _run_facts(source: Source) -> dict[str, Any]:
    """Metrics, costs, teachers and distillation settings of a run, from its results.json."""
    r = source.results
    m = source.model
    entry = m.entry
    if m.role == "teacher":
        method = m.label
    elif m.student_kind == "scratch":
        method = "student/scratch"
    else:
        method = _kd_method(r, entry.round)
    row = _row(r, method)
    target = r.ensemble()
    summary = r.summary
    teachers = [_teacher(source.folder, {"name": t.name, "model": t.model, "seed": t.seed, "weights": t.weights,
                                         "weights_hash": t.weights_hash, "test_acc": t.test_acc,
                                         "test_nll": t.test_nll, "val_acc": t.val_acc, "params": t.params,
                                         "flops": t.flops}) for t in r.teachers]
    return {
        "metrics": {"test_acc": entry.test_acc, "test_nll": entry.test_nll, "test_ece": entry.test_ece,
                    "val_acc": entry.val_acc, "val_nll": entry.val_nll, "measured": "results.json",
                    "seeds": _seeds(row), "scratch": _seeds(_row(r, "student/scratch")),
                    "ensemble": None if target is None else {"scheme": target.scheme, "test_acc": target.test_acc,
                                                             "test_nll": target.test_nll},
                    "gain_recovery": None if summary is None else summary.gain_recovery.model_dump(mode="json")},
        "cost": {"params": entry.params if m.role == "teacher" else (row or {}).get("params"),
                 "flops": entry.flops if m.role == "teacher" else (row or {}).get("flops"),
                 "cost_source": "results.json" if m.role == "teacher" or row else None},
        "teachers": teachers,
        "combiner": (summary.target_scheme if summary else None) or r.target_scheme,
        "teaching": None if r.teaching is None else {"mode": r.teaching.mode, "detail": r.teaching.text()},
    }


def _evaluate(spec: ModelSpec, weights: Path, data: DataBundle) -> dict[str, float]:
    model = build_model(spec, data.num_classes, data.in_chans, image_size=data.image_size).eval()
    load_weights(model, weights)
    with torch.inference_mode():
        logits = torch.cat([model(xb) for xb, _, _ in data.batches("test", 256, shuffle=False, augment=False)])
    scores = logits_metrics(logits, data.test.y)
    return {"test_acc": scores["acc"], "test_nll": scores["nll"], "params": count_params(model),
            "flops": count_flops(model, data.in_chans, data.image_size)}


def _sweep_facts(source: Source, data: DataBundle, measured: dict[str, float]) -> dict[str, Any]:
    """A sweep point's figures from sweep.json; this seed's and the teachers' measured at export."""
    row = source.sweep_row or {}
    teachers = []
    for t, label in zip(source.cfg.teachers, teacher_labels(source.cfg)):
        spec = teacher_spec(t)
        for s in range(t.seeds):
            weights = source.folder / "teachers" / f"{label}_s{s}" / "model.safetensors"
            if not weights.is_file():
                continue
            scores = _evaluate(ModelSpec(spec.name, spec.width, spec.depth), weights, data)
            teachers.append({"name": label, "model": t.model, "seed": s,
                             "weights": str(weights.relative_to(source.folder)), "weights_sha256": sha256_file(weights),
                             **scores, "val_acc": None, "measured": "at export"})
    seeds = row.get("seeds")
    kd = None if not row else {"method": "student/kd", "n": seeds, "test_acc_mean": row["kd_test_acc_mean"],
                               "test_acc_std": row["kd_test_acc_std"], "test_nll_mean": row["kd_test_nll_mean"],
                               "test_nll_std": None}
    scratch = None if not row else {"method": "student/scratch", "n": seeds,
                                    "test_acc_mean": row["scratch_test_acc_mean"],
                                    "test_acc_std": row["scratch_test_acc_std"], "test_nll_mean": None,
                                    "test_nll_std": None}
    recovery = None if not row else {"of_means": row["gain_recovery"], "mean": row["gain_recovery_per_seed_mean"],
                                     "std": row["gain_recovery_per_seed_std"], "n": seeds}
    return {
        "metrics": {"test_acc": measured["test_acc"], "test_nll": measured["test_nll"], "test_ece": None,
                    "val_acc": source.model.val_acc, "val_nll": source.model.val_nll,
                    "measured": "at export (a sweep stores only each point's means)",
                    "seeds": kd if source.model.role == "student" else None, "scratch": scratch,
                    "ensemble": None if not row else {"scheme": source.cfg.ensemble.scheme,
                                                      "test_acc": row["ensemble_test_acc"], "test_nll": None},
                    "gain_recovery": recovery},
        "cost": {"params": measured["params"], "flops": measured["flops"], "cost_source": "at export"},
        "teachers": teachers,
        "combiner": source.cfg.ensemble.scheme,
        "teaching": {"mode": source.cfg.distill.teaching, "detail": {
            "cached": "plain logit cache", "live": "live teachers",
            "views": f"cached views (shift stride {source.cfg.distill.view_stride} px)"}[source.cfg.distill.teaching]},
    }


def build_card(source: Source, data: DataBundle, *, measured: dict[str, float], formats: dict[str, Any],
               checks: list[dict[str, Any]], runtimes: list[dict[str, Any]], skipped: dict[str, str],
               preprocessing: dict[str, Any], quantization: dict[str, Any] | None, command: str) -> dict[str, Any]:
    """card.json: every fact of the export (see the module docstring for where each figure comes from)."""
    facts = _run_facts(source) if source.kind == "run" else _sweep_facts(source, data, measured)
    if facts["cost"].get("params") is None:  # a run stopped before its comparison stage
        facts["cost"] = {"params": measured["params"], "flops": measured["flops"], "cost_source": "at export"}
    if not (source.model.role == "student" and source.model.student_kind == "kd"):
        # the scratch baseline and gain recovery describe what distillation bought: a distilled student's facts
        facts["metrics"]["scratch"] = facts["metrics"]["gain_recovery"] = None
    cfg = source.cfg
    spec = source.spec
    m = source.model
    distilled = m.role == "student" and m.student_kind == "kd"
    return {
        "kdlab_export": CARD_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": m.name, "role": m.role, "student_kind": m.student_kind, "seed": m.seed,
                  "architecture": spec.name, "width": spec.width, "depth": spec.depth,
                  "num_classes": data.num_classes, "in_chans": data.in_chans, "image_size": data.image_size,
                  "class_names": list(data.class_names), **facts["cost"]},
        "selection": {"rule": source.selection, "default": source.default_pick, "val_acc": m.val_acc,
                      "val_nll": m.val_nll},
        "source": {"kind": source.kind, "folder": str(source.folder.absolute()), "run_id": source.run_id,
                   "name": cfg.name, "trial": source.trial, "weights": m.weights,
                   "weights_sha256": sha256_file(source.weights_path),
                   "config_sha256": hashlib.sha256(cfg.to_yaml().encode()).hexdigest()},
        "distillation": None if not distilled else {
            "teachers": facts["teachers"], "combiner": facts["combiner"], "loss": cfg.distill.loss,
            "temperature": cfg.distill.temperature, "alpha": cfg.distill.alpha, "rounds": cfg.distill.rounds,
            "teaching": facts["teaching"]},
        "teachers": facts["teachers"],
        "data": data_facts(data, cfg),
        "preprocessing": preprocessing,
        "metrics": facts["metrics"],
        "verified_test_acc": measured["test_acc"],   # the PyTorch model on this machine, fp32
        "formats": formats,
        "skipped": skipped,
        "quantization": quantization,
        "verification": checks,
        "runtimes": runtimes,
        "environment": {**versions(), "platform": platform.platform(), "executable": sys.executable},
        "reproduce": f"kdlab run {RUN_CONFIG_FILE} --out <new run folder>",
        "reproduce_in_place": f"kdlab run {source.folder / 'config.yaml'} --out {source.folder}"
        if source.kind == "run" else None,
        "export_command": command,
    }
