"""One experiment, end to end: check everything, train teachers, evaluate, write results.

`prepare` does every check that can fail on bad input (config ranges, data set, model names,
weights files, batch size, output folder) before anything is written, so a bad run leaves nothing
half-written behind. `run_experiment` then writes into the output folder as it goes:

  config.yaml     the validated config; `kdlab run config.yaml` reproduces the run
  events.jsonl    one JSON object per event, appended as they happen
  teachers/<label>_s<seed>/  per-epoch checkpoints and final weights
  results.json    written last, atomically
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from core.config import RunConfig, TeacherConfig
from core.data import DataBundle, load_data
from core.device import precision_for, resolve_device
from core.errors import ConfigError, OutputError
from core.models import ModelSpec, build_model, model_card
from core.train import (CancelToken, ClassificationTask, Event, EventBus, classification_metrics, fit,
                        predict_logits)
from core.train.checkpoint import save_weights

RESULTS_SCHEMA_VERSION = 1


@dataclass
class Member:
    """One teacher entry of the config, with its unique label and cost known before training."""

    index: int
    cfg: TeacherConfig
    label: str
    card: dict[str, Any]

    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.cfg.model, width=self.cfg.width, depth=self.cfg.depth,
                         pretrained=self.cfg.pretrained, weights_file=self.cfg.weights_file)


@dataclass
class Prepared:
    """Everything `run_experiment` needs, checked."""

    cfg: RunConfig
    device: torch.device
    data: DataBundle
    members: list[Member] = field(default_factory=list)

    @property
    def trainings(self) -> int:
        return sum(m.cfg.seeds for m in self.members)


def _unique_labels(teachers: list[TeacherConfig]) -> list[str]:
    labels, seen = [], {}
    for t in teachers:
        base = t.display
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return labels


def check_output_dir(out: Path, cfg: RunConfig) -> None:
    """Refuse an output folder that cannot be written or that holds a different run."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError("--out", f"'{out}' is a file, not a folder", "give a folder path")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError("--out", f"'{out}' cannot be created or written ('{probe}' is not a "
                          "writable folder)", "choose a folder you can write to")
    saved = out / "config.yaml"
    if saved.is_file():
        try:
            previous = yaml.safe_load(saved.read_text())
        except yaml.YAMLError:
            previous = None
        if previous != cfg.to_dict():
            raise OutputError("--out", f"'{out}' already holds a run with a different config",
                              "choose a new --out folder (the old run is kept)")


def prepare(cfg: RunConfig, out: Path | None = None) -> Prepared:
    """Run every input check; raises a KdlabError naming the field before anything is written."""
    if out is not None:
        check_output_dir(out, cfg)
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, device)
    if cfg.train.batch_size > len(data.train):
        raise ConfigError("train.batch_size", f"{cfg.train.batch_size} is larger than the train split "
                          f"({len(data.train)} images)", f"set train.batch_size to at most {len(data.train)}")
    members = []
    for i, (t, label) in enumerate(zip(cfg.teachers, _unique_labels(cfg.teachers))):
        spec = ModelSpec(name=t.model, width=t.width, depth=t.depth, pretrained=t.pretrained,
                         weights_file=t.weights_file)
        field = f"teachers.{i}.model"
        card = model_card(spec, data.num_classes, data.in_chans, data.image_size, field=field)
        if t.weights_file or t.pretrained:  # read the weights now: a bad file must fail before any output
            build_model(spec, data.num_classes, data.in_chans, image_size=data.image_size, field=field)
        members.append(Member(i, t, label, card))
    return Prepared(cfg, device, data, members)


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _atomic_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class JsonlWriter:
    """Event subscriber that appends one JSON line per event and flushes, so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1)

    def __call__(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_dict()) + "\n")

    def close(self) -> None:
        self._file.close()


def train_teacher(prep: Prepared, member: Member, seed_index: int, out: Path, events: EventBus,
                  cancel: CancelToken) -> dict[str, Any]:
    """Train one teacher draw (or resume it) and evaluate it on test."""
    cfg = prep.cfg
    seed = cfg.seed + 1000 * member.index + seed_index
    source = f"teacher/{member.label}/s{seed_index}"
    folder = out / "teachers" / f"{member.label}_s{seed_index}"
    fingerprint = _fingerprint(member.cfg.model_dump(), cfg.data.model_dump(), cfg.train.model_dump(), seed)
    torch.manual_seed(seed)
    model = build_model(member.spec(), prep.data.num_classes, prep.data.in_chans,
                        image_size=prep.data.image_size, field=f"teachers.{member.index}.model")
    result = fit(model, ClassificationTask(cfg.train.label_smoothing), prep.data, cfg.train,
                 source=source, seed=seed, events=events, cancel=cancel, ckpt_dir=folder,
                 fingerprint=fingerprint)
    save_weights(model, folder / "model.safetensors")
    logits, y = predict_logits(model, prep.data.batches("test", 1024, shuffle=False, augment=False),
                               prep.device, precision_for(prep.device))
    test = classification_metrics(logits, y)
    return {"name": member.label, "model": member.cfg.model, "seed": seed_index,
            "params": member.card["params"], "flops": member.card["flops"],
            "test_acc": test["acc"], "test_nll": test["nll"], "train_seconds": result.seconds,
            "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "val_acc": result.best_val.get("val/acc"), "val_nll": result.best_val.get("val/loss"),
            "history": result.history, "weights": str((folder / "model.safetensors").relative_to(out))}


def run_experiment(prep: Prepared, out: Path, events: EventBus | None = None,
                   cancel: CancelToken | None = None) -> dict[str, Any]:
    """Train every teacher draw, evaluate on test, and write config, events and results into `out`."""
    out = Path(out)
    events = events or EventBus()
    cancel = cancel or CancelToken()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(prep.cfg.to_yaml())
    writer = JsonlWriter(out / "events.jsonl")
    events.subscribe(writer)
    started = time.time()
    try:
        events.emit(Event("stage", "teachers", message=f"training {prep.trainings} teacher draw(s)",
                          metrics={"trainings": prep.trainings}))
        teachers = [train_teacher(prep, m, s, out, events, cancel)
                    for m in prep.members for s in range(m.cfg.seeds)]
        results = {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "name": prep.cfg.name,
            "dataset": prep.data.summary(),
            "device": str(prep.device),
            "torch": torch.__version__,
            "teachers": teachers,
            "seconds": time.time() - started,
        }
        _atomic_json(results, out / "results.json")
        events.emit(Event("stage", "run", message="done", metrics={"seconds": results["seconds"]}))
        return results
    finally:
        writer.close()
