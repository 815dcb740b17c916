"""The one config object that flows from the UI or a file through the pipeline.

It is saved beside every run as `config.yaml`; loading that file and running it again reproduces the
run. Every field has a range and a description, which the CLI and the dashboard both show.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: str = Field("digits", description="Data set: digits, shapes, cifar10, cifar100, mnist, "
                      "fashion_mnist or imagefolder.")
    root: str | None = Field(None, description="Local folder holding the files (torchvision data "
                             "sets, imagefolder). Not needed for digits and shapes.")
    download: bool = Field(False, description="Download a torchvision data set into root if it is "
                           "missing (needs network).")
    image_size: int = Field(16, ge=8, le=512, description="Side of the square images fed to models, "
                            "in pixels.")
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="Share of the training pool held "
                                "out for early stopping and ensemble weights.")
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="Share held out for reporting, for "
                                 "data sets without an official test split.")
    split_seed: int = Field(0, ge=0, description="Seed of the train/val/test split.")
    augment: bool = Field(True, description="Random shifts (and flips where they make sense) on the "
                          "device during training.")
    memory_budget_mb: int = Field(2048, ge=1, description="Data sets larger than this (as uint8) "
                                  "stream through a DataLoader instead of living on the device.")
    num_workers: int = Field(2, ge=0, le=64, description="DataLoader workers when streaming.")
    limit: int | None = Field(None, ge=10, description="Use at most this many images of the pool "
                              "(quick trials).")
    train_fraction: float = Field(1.0, gt=0.0, le=1.0, description="Share of the train split kept "
                                  "(stratified; val and test unchanged; a smaller share keeps a subset of a "
                                  "larger one's images). For learning curves; 1 = all of it.")
    # shapes only
    num_classes: int = Field(4, ge=2, le=100, description="shapes: number of classes.")
    count: int = Field(600, ge=20, le=1_000_000, description="shapes: number of images in total.")
    channels: int = Field(1, description="shapes: 1 (grey) or 3 (colour) channels.")
    noise: float = Field(0.1, ge=0.0, le=1.0, description="shapes: pixel noise std (0-1 scale).")
    overlap: float = Field(0.0, ge=0.0, le=1.0, description="shapes: 0 = classes distinct, 1 = "
                           "classes indistinguishable.")


class TeacherConfig(_Strict):
    model: str = Field(..., description="A timm model name (see `kdlab models`).")
    label: str | None = Field(None, description="Display name; defaults to the model name.")
    seeds: int = Field(1, ge=1, le=20, description="Independent trainings of this teacher "
                       "(different seeds).")
    pretrained: bool = Field(False, description="Start from pretrained weights (hub or weights_file).")
    weights_file: str | None = Field(None, description="Local safetensors or timm checkpoint to start "
                                     "from; the classifier head is re-made for this data set.")
    width: float | None = Field(None, gt=0.0, le=4.0, description="Channel multiplier (ResNet, "
                                "MobileNetV3, EfficientNet families).")
    depth: float | None = Field(None, gt=0.0, le=4.0, description="Block-count multiplier (same "
                                "families).")

    @property
    def display(self) -> str:
        return self.label or self.model


class StudentConfig(_Strict):
    model: str = Field("resnet10t", description="A timm model name for the student.")
    width: float | None = Field(0.25, gt=0.0, le=4.0, description="Channel multiplier.")
    depth: float | None = Field(None, gt=0.0, le=4.0, description="Block-count multiplier.")
    seeds: int = Field(3, ge=1, le=20, description="Student trainings per method (mean +- std).")
    epochs: int | None = Field(None, ge=1, le=10_000, description="Student epochs, scratch and distilled "
                               "alike (None = train.epochs). Small students are cheap to train longer, "
                               "and distillation gains grow with the schedule.")

    lr: float | None = Field(None, gt=0.0, le=10.0, description="Student peak learning rate, scratch and "
                             "distilled alike (None = train.lr). Small students often want a larger one "
                             "than their teachers.")

    def train_config(self, train: "TrainConfig") -> "TrainConfig":
        """The students' training config: `train`, with `epochs` and `lr` where set."""
        update = {k: v for k, v in (("epochs", self.epochs), ("lr", self.lr)) if v is not None}
        return train.model_copy(update=update) if update else train


class EnsembleConfig(_Strict):
    scheme: str = Field("mean_logit", description="How members are combined: mean_logit, mean_prob, "
                        "vote, learned, uncertainty, stacking or bradley_terry.")
    draws: Literal["seeds", "bootstrap"] = Field(
        "seeds", description="How the draws of one teacher (teachers.*.seeds) differ: 'seeds' (initial "
        "weights and batch order) or 'bootstrap' (each draw also trains on a resample of the train split, "
        "drawn with replacement: bagging). Bias and variance need >= 2 draws per teacher.")


class DistillConfig(_Strict):
    temperature: float = Field(4.0, gt=0.0, le=100.0, description="Softmax temperature T of the "
                               "distillation term (> 0).")
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="Weight of the distillation term; 1 - alpha "
                         "goes to hard-label cross-entropy.")
    loss: str = Field("hinton", description="Distillation loss.")
    rounds: int = Field(1, ge=1, le=10, description="Residual re-weighting rounds.")
    teacher_budget: float = Field(1.0, gt=0, le=1, description="Share of train examples the teachers are "
                                  "queried on per round: round 1 a stratified random draw, each later round "
                                  "as many more where the student's residual is largest; the others train on "
                                  "hard labels (1 = every example, as without a budget).")
    teaching: Literal["cached", "views", "live"] = Field(
        "views", description="Where the student's target comes from: 'cached' (teachers' logits on the "
        "plain train images), 'views' (cached per augmentation view, so the student sees the view its "
        "target was made on) or 'live' (teachers run on every student batch).")
    view_stride: int = Field(1, ge=1, le=16, description="With teaching = views: pixels between cached "
                             "shift offsets (1 = every offset the training augmentation can draw; "
                             "larger caches fewer views).")


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the train split.")
    batch_size: int = Field(128, ge=1, le=65_536, description="Images per optimiser step.")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd (Nesterov).")
    lr: float = Field(3e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    weight_decay: float = Field(5e-4, ge=0.0, le=1.0, description="Decoupled weight decay.")
    schedule: Literal["onecycle", "cosine"] = Field("onecycle", description="Learning-rate schedule.")
    warmup_fraction: float = Field(0.15, ge=0.0, le=0.9, description="Share of steps spent warming up.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the CE term.")
    patience: int | None = Field(None, ge=1, description="Stop after this many epochs without a better "
                                 "val loss (None = never).")
    log_every: int = Field(10, ge=1, description="Emit a step event every this many steps.")
    compile: bool = Field(False, description="torch.compile the model (CUDA; pays off on long runs).")


# Fields added after runs were first stored, with the default every earlier run had in effect.
ADDED_LATER: dict[str, Any] = {"distill.teacher_budget": 1.0, "data.train_fraction": 1.0}


def section_identity(section: BaseModel, name: str) -> dict[str, Any]:
    """section.model_dump() without its ADDED_LATER fields at their default: what checkpoint and cache
    fingerprints hash, so that a field added since does not retrain the checkpoints of earlier runs."""
    out = section.model_dump()
    for path, default in ADDED_LATER.items():
        owner, field_name = path.split(".")
        if owner == name and out.get(field_name) == default:
            del out[field_name]
    return out


class RunConfig(_Strict):
    name: str = Field("run", description="A short name for the run.")
    data: DataConfig = Field(default_factory=DataConfig)
    teachers: list[TeacherConfig] = Field(default_factory=list, description="Ensemble members.")
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    device: str = Field("auto", description="auto, cpu, cuda or mps.")
    seed: int = Field(0, ge=0, description="Base seed; teacher seed s of member i uses seed + 1000*i + s.")

    @model_validator(mode="after")
    def _check(self) -> "RunConfig":
        if not self.teachers:
            raise ValueError("teachers: at least one teacher is needed")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-ready)."""
        return json.loads(self.model_dump_json())

    def identity(self) -> dict[str, Any]:
        """to_dict() without the fields added after runs were first stored, where they hold their default.

        What names a run's folder and checkpoints: a folder written before a field existed holds the
        same run as the same config with that field at its default, so it still resumes.
        """
        out = self.to_dict()
        for path, default in ADDED_LATER.items():
            section, name = path.split(".")
            if out.get(section, {}).get(name) == default:
                del out[section][name]
        return out

    def decomposition_plan(self) -> str:
        """What the diagnostics can decompose with this config, and what a full decomposition costs."""
        trainings = sum(t.seeds for t in self.teachers)
        draws = min(t.seeds for t in self.teachers)
        if draws >= 2:
            how = "bootstrap resamples" if self.ensemble.draws == "bootstrap" else "seeds"
            return (f"diagnostics: full bias-variance-diversity decomposition over {draws} draws per "
                    f"teacher ({how}; {trainings} teacher trainings)")
        full = sum(max(t.seeds, 2) for t in self.teachers)
        return (f"diagnostics: single-run form only (loss = member loss - diversity); the bias/variance "
                f"split needs >= 2 draws per teacher: set teachers.*.seeds=2 ({full} teacher trainings "
                f"instead of {trainings})")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _format_validation_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "config"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if ":" in msg:  # our own validators already name the field
            return msg
    got = first.get("input")
    got_text = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{loc}: {msg}{got_text}"


def problems(raw: dict[str, Any]) -> dict[str, str]:
    """Every problem of a config dict, field path -> message (empty when it is valid); for forms."""
    try:
        RunConfig.model_validate(raw)
    except ValidationError as err:
        out: dict[str, str] = {}
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "config"
            msg = e["msg"].removeprefix("Value error, ")
            out.setdefault(loc, msg)
        return out
    return {}


def validate(raw: dict[str, Any]) -> RunConfig:
    """Build a RunConfig from a dict, turning the first problem into a one-line ConfigError."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError("", _format_validation_error(err), "fix the value and run again") from None


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a dict."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("config", f"file '{path}' does not exist", "give the path of a .toml or .yaml file")
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError("config", f"'{path}' is {what}", "give the path of a .toml or .yaml file")
    try:
        text = path.read_text()
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except OSError as err:
        raise ConfigError("config", f"'{path}' cannot be read ({err.strerror or err})",
                          "check the file's permissions") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError("config", f"'{path}' cannot be parsed: {syntax_error_text(err)}",
                          "check its TOML/YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("config", f"'{path}' does not hold a mapping", "write key: value pairs")
    return data


def syntax_error_text(err: Exception) -> str:
    """The parser's own cause and position, on one line: `found character '\\t' ... at line 3, column 1`.

    PyYAML keeps the cause in `problem` and a 0-based `problem_mark`; its str() starts with the
    context ("while scanning for the next token"), which alone says nothing. tomllib puts the
    cause and position in its message ("Invalid value (at line 2, column 9)").
    """
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        text = err.problem
        mark = err.problem_mark or err.context_mark
        if mark is not None:
            text += f" at line {mark.line + 1}, column {mark.column + 1}"
        if err.context:
            text += f" ({err.context})"
        return text
    if isinstance(err, UnicodeDecodeError):
        return f"not UTF-8 text (byte {err.start})"
    return " ".join(str(err).split()) or type(err).__name__


def list_presets() -> list[str]:
    """Names of the bundled presets, the default first."""
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    return sorted(names, key=lambda n: n != "digits-demo")


def preset(name: str) -> dict[str, Any]:
    """A bundled preset as a dict."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("preset", f"unknown preset '{name}'", f"pick one of {', '.join(list_presets())}")
    return yaml.safe_load(path.read_text())


def parse_value(text: str) -> Any:
    """`--set` values use YAML scalars: 4 -> int, 0.5 -> float, true -> bool, [a, b] -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides; `teachers.0.model=resnet18` indexes lists."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError("--set", f"'{item}' is not key=value", "write e.g. --set distill.temperature=4")
        key, value = item.split("=", 1)
        set_field(raw, key, parse_value(value))
    return raw


def set_field(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set the dotted field `key` of a config dict to an already-parsed value (lists are indexed)."""
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(key, f"'{part}' is not an index of a list of {len(node)}",
                                  "use an existing index such as 0")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        else:
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(key, f"'{part}' is a value, not a section", "check the key path")
    return raw


def load(path: str | Path | None = None, preset_name: str | None = None,
         overrides: list[str] | None = None) -> RunConfig:
    """Config from a file or a preset (default digits-demo), with `--set` overrides applied."""
    if path is not None and preset_name is not None:
        raise ConfigError("config", "both a file and --preset were given", "pass one of them")
    raw = read_file(path) if path is not None else preset(preset_name or "digits-demo")
    return validate(apply_overrides(raw, overrides or []))
