"""Everything that can fail on bad input, checked before a run writes anything.

`prepare` checks config ranges, the data set, model names, weights files, the batch size and the
output folder, and returns a `Prepared` run; a bad input raises a KdlabError naming the field, and
leaves no folder and no store row behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from core.config import RunConfig, TeacherConfig
from core.data import DataBundle, load_data
from core.device import resolve_device
from core.distill import kd_loss_doc
from core.ensemble import fits_on_val
from core.errors import ConfigError, OutputError
from core.folders import probe_folder
from core.models import ModelSpec, build_model, model_card
from core.students import student_spec

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One teacher entry of the config, with its unique label and cost known before training."""

    index: int
    cfg: TeacherConfig
    label: str
    card: dict[str, Any]

    def spec(self) -> ModelSpec:
        return teacher_spec(self.cfg)


def teacher_spec(t: TeacherConfig) -> ModelSpec:
    """A teacher's model spec from its config entry."""
    return ModelSpec(name=t.model, width=t.width, depth=t.depth, pretrained=t.pretrained,
                     weights_file=t.weights_file)


@dataclass
class Prepared:
    """Everything `run_experiment` needs, checked."""

    cfg: RunConfig
    device: torch.device
    data: DataBundle
    members: list[Member] = field(default_factory=list)
    student: dict[str, Any] = field(default_factory=dict)  # the student's model card
    warnings: list[str] = field(default_factory=list)  # allowed but probably unintended settings

    @property
    def trainings(self) -> int:
        return sum(m.cfg.seeds for m in self.members)

    @property
    def decomposition_plan(self) -> str:
        return self.cfg.decomposition_plan()


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
    probe_folder(out, "--out")
    saved = out / "config.yaml"
    if saved.is_file():
        try:
            previous = yaml.safe_load(saved.read_text())
        except yaml.YAMLError:
            previous = None
        if _identity(previous) != cfg.identity():
            raise OutputError("--out", f"'{out}' already holds a run with a different config",
                              "choose a new --out folder (the old run is kept)")


def _identity(saved: Any) -> dict[str, Any] | None:
    """A saved config.yaml's identity (RunConfig.identity), or None when it is not a valid config."""
    from core import config as config_mod
    from core.errors import KdlabError

    if not isinstance(saved, dict):
        return None
    try:
        return config_mod.validate(saved).identity()
    except (KdlabError, ValueError) as err:
        log.info("the saved config.yaml is not a valid config any more (%s): treated as another run", err)
        return None


def prepare(cfg: RunConfig, out: Path | None = None) -> Prepared:
    """Run every input check; raises a KdlabError naming the field before anything is written."""
    if out is not None:
        check_output_dir(out, cfg)
    # Registry look-ups raise the registry's own error (field, name, choices) for an unknown name.
    fits_on_val(cfg.ensemble.scheme)
    kd_loss_doc(cfg.distill.loss)
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, device)
    if cfg.train.batch_size > len(data.train):
        raise ConfigError("train.batch_size", f"{cfg.train.batch_size} is larger than the train split "
                          f"({len(data.train)} images)", f"set train.batch_size to at most {len(data.train)}")
    members = []
    for i, (t, label) in enumerate(zip(cfg.teachers, _unique_labels(cfg.teachers))):
        spec = teacher_spec(t)
        field = f"teachers.{i}.model"
        card = model_card(spec, data.num_classes, data.in_chans, data.image_size, field=field)
        if t.weights_file or t.pretrained:  # read the weights now: a bad file must fail before any output
            build_model(spec, data.num_classes, data.in_chans, image_size=data.image_size, field=field)
        members.append(Member(i, t, label, card))
    student = model_card(student_spec(cfg), data.num_classes, data.in_chans, data.image_size,
                         field="student.model")
    prep = Prepared(cfg, device, data, members, student)
    smallest = min(members, key=lambda m: m.card["params"])
    if student["params"] > smallest.card["params"]:
        prep.warnings.append(f"student.model: the student ({student['params'] / 1e6:.2f}M params) is larger "
                             f"than teacher {smallest.label} ({smallest.card['params'] / 1e6:.2f}M); "
                             "distillation usually aims at a smaller model (lower student.width)")
    return prep


def config_fingerprint(*parts: Any) -> str:
    """16 hex digits of SHA-256 over JSON of `parts`: what a checkpoint was trained with."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
