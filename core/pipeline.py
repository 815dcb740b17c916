"""One experiment, end to end: check everything, train teachers, evaluate, write results.

`prepare` does every check that can fail on bad input (config ranges, data set, model names,
weights files, batch size, output folder) before anything is written, so a bad run leaves nothing
half-written behind. `run_experiment` then writes into the output folder as it goes:

  config.yaml     the validated config; `kdlab run config.yaml` reproduces the run
  events.jsonl    one JSON object per event, appended as they happen
  teachers/<label>_s<seed>/  per-epoch checkpoints and final weights
  cache/          teacher logits per split (and per augmentation view), keyed by weights hash
  students/<kind>_s<seed>/  the same for every student
  test_outputs.safetensors  per-example test outputs of every model (see save_test_outputs)
  results.json    rewritten atomically after every stage (status says how far it got)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from torch import nn

from core import report
from core.atomic import write_json, write_tensors
from core.bench import ensemble_cost, measure
from core.cache import SPLITS, CacheStats, file_hash, teacher_logits, teacher_view_logits
from core.config import RunConfig, TeacherConfig
from core.data import DataBundle, ViewGrid, load_data
from core.device import precision_for, resolve_device
from core.diagnostics import diagnose, group_member_major
from core.ensemble import Combined, combine, fits_on_val, list_combiners
from core.errors import Cancelled, ConfigError, KdlabError, ModelError, OutputError
from core.evaluate import gain_recovery_over_seeds, logits_metrics, probs_metrics
from core.models import ModelSpec, build_model, model_card
from core.distill import kd_loss_doc
from core.students import Teaching, residual_weights, student_spec, train_student
from core.train import CancelToken, ClassificationTask, Event, EventBus, fit, predict_logits
from core.train.checkpoint import save_weights

RESULTS_SCHEMA_VERSION = 1
FALLBACK_SCHEME = "mean_logit"  # fits nothing, so it always works; the cross-entropy centroid


def _check_finite(logits: dict[str, torch.Tensor], label: str, seed: int) -> None:
    bad = [split for split, z in logits.items() if not torch.isfinite(z).all()]
    if bad:
        raise FloatingPointError(f"{label} (seed {seed}) gives non-finite logits on {', '.join(bad)}: "
                                 "a diverged teacher")


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


class JsonlWriter:
    """Event subscriber that appends one JSON line per event and flushes, so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "a", buffering=1)

    def __call__(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_dict()) + "\n")

    def close(self) -> None:
        self._file.close()


def train_teacher(prep: Prepared, member: Member, seed_index: int, out: Path, events: EventBus,
                  cancel: CancelToken) -> tuple[dict[str, Any], nn.Module]:
    """Train one teacher draw (or resume it) and evaluate it on test."""
    cfg = prep.cfg
    seed = cfg.seed + 1000 * member.index + seed_index
    source = f"teacher/{member.label}/s{seed_index}"
    folder = out / "teachers" / f"{member.label}_s{seed_index}"
    fingerprint = config_fingerprint(member.cfg.model_dump(), cfg.data.model_dump(), cfg.train.model_dump(),
                                     seed, cfg.ensemble.draws)
    torch.manual_seed(seed)
    model = build_model(member.spec(), prep.data.num_classes, prep.data.in_chans,
                        image_size=prep.data.image_size, field=f"teachers.{member.index}.model")
    # A bagging draw trains on its own resample; its logits are still taken on the whole train split.
    train_data = prep.data.bootstrap(seed) if cfg.ensemble.draws == "bootstrap" else prep.data
    result = fit(model, ClassificationTask(cfg.train.label_smoothing), train_data, cfg.train,
                 source=source, seed=seed, events=events, cancel=cancel, ckpt_dir=folder,
                 fingerprint=fingerprint)
    save_weights(model, folder / "model.safetensors")
    logits, y = predict_logits(model, prep.data.batches("test", 1024, shuffle=False, augment=False),
                               prep.device, precision_for(prep.device))
    test = logits_metrics(logits, y)
    return {"name": member.label, "model": member.cfg.model, "seed": seed_index,
            "params": member.card["params"], "flops": member.card["flops"],
            "test_acc": test["acc"], "test_nll": test["nll"], "test_ece": test["ece"],
            "train_seconds": result.seconds,
            "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            "val_acc": result.best_val.get("val/acc"), "val_nll": result.best_val.get("val/loss"),
            "history": result.history, "weights": str((folder / "model.safetensors").relative_to(out)),
            "weights_hash": file_hash(folder / "model.safetensors")}, model


@dataclass
class TrainedTeachers:
    """The teacher stage's output: every draw that trained to finite logits, in config order."""

    entries: list[dict[str, Any]] = field(default_factory=list)   # results.json "teachers"
    models: dict[str, nn.Module] = field(default_factory=dict)    # one model per label (cost)
    logits: list[dict[str, torch.Tensor]] = field(default_factory=list)  # split -> (N, K), per draw
    draws: list[tuple[nn.Module, str]] = field(default_factory=list)     # (model, weights hash)
    dropped: list[dict[str, Any]] = field(default_factory=list)          # diverged draws, with why

    def stack(self) -> dict[str, torch.Tensor]:
        """Split -> (M, N, K) logits of every kept draw."""
        return {split: torch.stack([z[split] for z in self.logits]) for split in SPLITS}


def teacher_stage(prep: Prepared, out: Path, events: EventBus, cancel: CancelToken, stats: CacheStats,
                  warn: Callable[[str], None]) -> TrainedTeachers:
    """Train (or resume) every teacher draw and cache its logits; a diverged draw is left out with a warning."""
    trained = TrainedTeachers()
    for m in prep.members:
        for s in range(m.cfg.seeds):
            try:
                entry, model = train_teacher(prep, m, s, out, events, cancel)
                logits = teacher_logits(model, entry["weights_hash"], prep.data, out / "cache", stats)
                _check_finite(logits, m.label, s)
            except FloatingPointError as err:  # a diverged draw is left out; the others go on
                trained.dropped.append({"name": m.label, "seed": s, "error": str(err)})
                warn(f"teachers.{m.index}: draw {s} of {m.label} left out of the ensemble: {err}")
                continue
            trained.entries.append(entry)
            trained.models.setdefault(m.label, model)
            trained.draws.append((model, entry["weights_hash"]))
            trained.logits.append(logits)
    return trained


def ensemble_stage(prep: Prepared, stack: dict[str, torch.Tensor], events: EventBus
                   ) -> tuple[list[dict[str, Any]], dict[str, Combined]]:
    """Combine the teacher draws with every registered scheme and evaluate each on test.

    A scheme that cannot be fitted (e.g. a val split too small) is reported with its error; the
    others go on.
    """
    entries, combined = [], {}
    val_y, test_y = prep.data.val.y, prep.data.test.y
    for scheme in list_combiners():
        try:
            result = combine(scheme, stack, val_y)
        except KdlabError as err:
            events.emit(Event("info", f"ensemble/{scheme}", message=f"skipped: {err}"))
            entries.append({"scheme": scheme, "error": str(err)})
            continue
        combined[scheme] = result
        test = probs_metrics(result.probs["test"], test_y)
        entry = {"scheme": scheme, "test_acc": test["acc"], "test_nll": test["nll"], "test_ece": test["ece"],
                 "test_brier": test["brier"], "members": stack["test"].shape[0]}
        if result.global_weights is not None:
            entry["global_weights"] = [float(w) for w in result.global_weights]
        if result.weights is not None:
            entry["mean_example_weights"] = [float(w) for w in result.weights["test"].mean(dim=0)]
        entry["info"] = {k: v for k, v in result.info.items() if isinstance(v, (int, float, str, bool))}
        entries.append(entry)
    return entries, combined


def teaching_stage(prep: Prepared, target: Combined, draws: list[tuple[nn.Module, str]], out: Path,
                   stats: CacheStats) -> Teaching:
    """The distilled students' targets, as `distill.teaching` asks; `draws` = (model, weights hash)."""
    d, data = prep.cfg.distill, prep.data
    started = time.perf_counter()
    if d.teaching == "cached":
        teaching = Teaching("cached", target=target.probs["train"])
    elif d.teaching == "live":
        teaching = Teaching("live", teachers=[model for model, _ in draws], predict=target.predict)
    else:
        grid = ViewGrid.for_data(data.image_size, data.flip, data.augment, d.view_stride)
        views = torch.stack([teacher_view_logits(model, h, data, grid, out / "cache", stats)
                             for model, h in draws])  # (M, V, N, K)
        with torch.no_grad():
            per_view = torch.stack([target.predict(views[:, v]) for v in range(grid.num_views)])
        teaching = Teaching("views", target=per_view.reshape(-1, per_view.shape[-1]), views=grid)
    teaching.seconds = time.perf_counter() - started
    return teaching


def student_stage(prep: Prepared, teaching: Teaching, plain_target: torch.Tensor, out: Path, events: EventBus,
                  cancel: CancelToken
                  ) -> tuple[list[dict[str, Any]], dict[str, nn.Module], dict[str, list[torch.Tensor]]]:
    """Scratch and distilled students for every seed; `rounds` > 1 adds residual re-weighting rounds.

    Returns the results entries, one model per kind (for cost measurement) and the test logits per
    seed of the scratch and last-round distilled students (for the diagnostics).
    """
    cfg = prep.cfg
    fingerprint = config_fingerprint(cfg.student.model_dump(), cfg.data.model_dump(), cfg.train.model_dump(),
                                     cfg.distill.model_dump(), cfg.ensemble.model_dump(),
                                     [m.cfg.model_dump() for m in prep.members], cfg.seed)
    entries, models = [], {}
    test_logits: dict[str, list[torch.Tensor]] = {"scratch": [], "kd": []}
    for s in range(cfg.student.seeds):
        scratch = train_student(cfg, prep.data, "scratch", s, out, events, cancel, teaching,
                                fingerprint=fingerprint)
        entries.append(scratch.entry)
        models["scratch"] = scratch.model
        test_logits["scratch"].append(scratch.test_logits)
        weights = None
        for r in range(1, cfg.distill.rounds + 1):
            kd = train_student(cfg, prep.data, "kd", s, out, events, cancel, teaching, weights=weights,
                               round_index=r, fingerprint=fingerprint)
            entries.append(kd.entry)
            models["kd"] = kd.model
            if r < cfg.distill.rounds:
                train_logits, _ = predict_logits(kd.model, prep.data.batches("train", 1024, shuffle=False,
                                                                             augment=False),
                                                 prep.device, precision_for(prep.device))
                weights = residual_weights(plain_target, train_logits)
        test_logits["kd"].append(kd.test_logits)
    return entries, models, test_logits


GALLERY_SIZE = 16  # test images kept for the "where teachers disagree most" gallery


def teacher_disagreement(test_logits: torch.Tensor) -> torch.Tensor:
    """(N,) generalised Jensen-Shannon divergence of the draws' probabilities, in nats.

    H(mean_i p_i) - mean_i H(p_i): zero when every draw gives the same distribution, largest when
    confident draws pick different classes.
    """
    p = test_logits.float().softmax(dim=-1)  # (M, N, K)

    def entropy(q: torch.Tensor) -> torch.Tensor:
        return -(q * q.clamp_min(1e-12).log()).sum(dim=-1)

    return entropy(p.mean(dim=0)) - entropy(p).mean(dim=0)


def save_test_outputs(prep: Prepared, teachers: list[dict[str, Any]], member_logits: list[dict[str, torch.Tensor]],
                      combined: dict[str, Combined], student_logits: dict[str, list[torch.Tensor]],
                      path: Path) -> None:
    """Everything the dashboard draws per test example, in one safetensors file.

    Keys: `labels` (N,); `teacher/<label>/s<seed>` logits (N, K); `ensemble/<scheme>` probabilities;
    `weights/<scheme>` per-example member weights (N, M); `student/<kind>/s<seed>` logits;
    `gallery/index`, `gallery/images` (uint8) and `gallery/disagreement` for the test images where
    the teachers disagree most.
    """
    tensors: dict[str, torch.Tensor] = {"labels": prep.data.test.y}
    for t, z in zip(teachers, member_logits):
        tensors[f"teacher/{t['name']}/s{t['seed']}"] = z["test"]
    for scheme, result in combined.items():
        tensors[f"ensemble/{scheme}"] = result.probs["test"]
        if result.weights is not None:
            tensors[f"weights/{scheme}"] = result.weights["test"]
    for kind, per_seed in student_logits.items():
        for s, z in enumerate(per_seed):
            tensors[f"student/{kind}/s{s}"] = z
    score = teacher_disagreement(torch.stack([z["test"] for z in member_logits]))
    top = score.argsort(descending=True)[:GALLERY_SIZE]
    tensors.update({"gallery/index": top, "gallery/disagreement": score[top],
                    "gallery/images": prep.data.test.x[top.to(prep.data.test.x.device)]})
    write_tensors(tensors, path)


def diagnostics_stage(prep: Prepared, teachers: list[dict[str, Any]], member_logits: list[dict[str, torch.Tensor]],
                      student_logits: dict[str, list[torch.Tensor]]) -> dict[str, Any]:
    """Bias-variance-diversity, error correlation and calibration on test, from the cached logits."""
    names = list(dict.fromkeys(t["name"] for t in teachers))  # members that kept at least one draw
    draws = [sum(t["name"] == name for t in teachers) for name in names]
    grouped = {split: group_member_major([z[split] for z in member_logits], draws) for split in ("val", "test")}
    return diagnose(grouped["test"], prep.data.test.y, member_names=names, val_logits=grouped["val"],
                    val_y=prep.data.val.y, students=student_logits, class_names=prep.data.class_names)


def comparison_stage(prep: Prepared, teachers: list[dict[str, Any]], teacher_models: dict[str, nn.Module],
                     ensembles: list[dict[str, Any]], students: list[dict[str, Any]],
                     student_models: dict[str, nn.Module], target_scheme: str
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per method with accuracy, NLL (mean +- std over seeds), ECE and measured cost."""
    data, device = prep.data, prep.device
    cost_of = {label: measure(model, data.in_chans, data.image_size, device)
               for label, model in teacher_models.items()}
    rows = []
    for member in prep.members:
        draws = [t for t in teachers if t["name"] == member.label]
        if not draws:  # every draw of this member diverged (see results["teachers_dropped"])
            continue
        rows.append(report.row(member.label, "teacher", draws, cost_of[member.label],
                               sum(t["train_seconds"] for t in draws)))
    # An ensemble runs every teacher draw: its cost is the sum of its members' (each draw costs its model's).
    ens_cost = ensemble_cost([cost_of[t["name"]] for t in teachers])
    teacher_seconds = sum(t["train_seconds"] for t in teachers)
    for e in ensembles:
        if "error" not in e:
            rows.append(report.row(f"ensemble/{e['scheme']}", "ensemble", [e], ens_cost, teacher_seconds))
    student_cost = measure(student_models["scratch"], data.in_chans, data.image_size, device)
    scratch = [s for s in students if s["kind"] == "scratch"]
    rows.append(report.row("student/scratch", "student", scratch, student_cost,
                           sum(s["train_seconds"] for s in scratch)))
    rounds = sorted({s["round"] for s in students if s["kind"] == "kd"})
    for r in rounds:
        kd = [s for s in students if s["kind"] == "kd" and s["round"] == r]
        name = "student/kd" if len(rounds) == 1 else f"student/kd-round{r}"
        rows.append(report.row(name, "student", kd, student_cost,
                               teacher_seconds + sum(s["train_seconds"] for s in kd)))
    target = next(e for e in ensembles if e["scheme"] == target_scheme)
    last_kd = [s for s in students if s["kind"] == "kd" and s["round"] == rounds[-1]]
    recovery = gain_recovery_over_seeds([s["test_acc"] for s in last_kd], [s["test_acc"] for s in scratch],
                                        target["test_acc"])
    student_params = student_cost.params
    mean_teacher_params = sum(c.params for c in cost_of.values()) / len(cost_of)
    summary = {"target_scheme": target_scheme, "gain_recovery": recovery,
               "student_params": student_params,
               "student_to_teacher_params": student_params / mean_teacher_params,
               "student_to_ensemble_params": student_params / ens_cost.params}
    return rows, summary


def run_experiment(prep: Prepared, out: Path, events: EventBus | None = None,
                   cancel: CancelToken | None = None) -> dict[str, Any]:
    """Teachers -> logit cache -> ensembles -> students -> comparison, written into `out` as it goes.

    results.json is rewritten after every stage, so a failure in a later stage keeps the earlier
    stages' results.
    """
    out = Path(out)
    events = events or EventBus()
    cancel = cancel or CancelToken()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(prep.cfg.to_yaml())
    writer = JsonlWriter(out / "events.jsonl")
    events.subscribe(writer)
    started = time.time()
    results: dict[str, Any] = {
        "schema_version": RESULTS_SCHEMA_VERSION, "name": prep.cfg.name, "dataset": prep.data.summary(),
        "class_names": list(prep.data.class_names),
        "device": str(prep.device), "torch": torch.__version__, "status": "running",
        "warnings": list(prep.warnings)}

    def warn(message: str) -> None:
        results["warnings"].append(message)
        events.emit(Event("info", "run", message=f"warning: {message}"))

    def save(status: str = "running") -> None:
        results["status"] = status
        results["seconds"] = time.time() - started
        write_json(results, out / "results.json", indent=2)

    try:
        events.emit(Event("stage", "teachers", message=f"training {prep.trainings} teacher draw(s)",
                          metrics={"trainings": prep.trainings}))
        stats = CacheStats()
        trained = teacher_stage(prep, out, events, cancel, stats, warn)
        teachers, teacher_models, member_logits, draws = (trained.entries, trained.models, trained.logits,
                                                          trained.draws)
        results["teachers"] = teachers
        results["teachers_dropped"] = trained.dropped
        if not teachers:
            save("failed")
            raise ModelError("teachers", "every teacher draw diverged (non-finite loss or logits)",
                             "lower train.lr, or check the teachers' weights files")
        results["logit_cache"] = {"hits": stats.hits, "misses": stats.misses}
        save()

        events.emit(Event("stage", "ensembles", message="combining teachers"))
        ensembles, combined = ensemble_stage(prep, trained.stack(), events)
        results["ensembles"] = ensembles
        scheme = prep.cfg.ensemble.scheme
        if scheme not in combined:  # e.g. a val split too small to fit it: teach with the default
            reason = next(e["error"] for e in ensembles if e["scheme"] == scheme)
            warn(f"ensemble.scheme: '{scheme}' could not be fitted ({reason}); the students learn from "
                 f"'{FALLBACK_SCHEME}' instead")
            scheme = FALLBACK_SCHEME
        results["target_scheme"] = scheme
        save()

        events.emit(Event("stage", "students", message=f"training {prep.cfg.student.seeds} scratch and "
                          f"{prep.cfg.student.seeds * prep.cfg.distill.rounds} distilled student(s)"))
        target = combined[scheme]
        teaching = teaching_stage(prep, target, draws, out, stats)
        results["teaching"] = teaching.describe()
        results["logit_cache"] = {"hits": stats.hits, "misses": stats.misses}
        students, student_models, student_logits = student_stage(prep, teaching, target.probs["train"], out,
                                                                 events, cancel)
        results["students"] = students
        save()

        save_test_outputs(prep, teachers, member_logits, combined, student_logits, out / "test_outputs.safetensors")
        results["artifacts"] = {"test_outputs": "test_outputs.safetensors"}
        events.emit(Event("stage", "diagnostics", message="bias, variance, diversity"))
        try:
            results["diagnostics"] = diagnostics_stage(prep, teachers, member_logits, student_logits)
        except Exception as err:  # noqa: BLE001 - diagnostics explain a run, never cost it its results
            warn(f"diagnostics: {type(err).__name__}: {err}")
            results["diagnostics"] = {"error": str(err)}
        save()

        events.emit(Event("stage", "comparison", message="measuring cost"))
        results["comparison"], results["summary"] = comparison_stage(
            prep, teachers, teacher_models, ensembles, students, student_models, scheme)
        save("done")
        events.emit(Event("stage", "run", message="done", metrics={"seconds": results["seconds"]}))
        return results
    except Cancelled:
        save("cancelled")
        raise
    except Exception:
        save("failed")
        raise
    finally:
        writer.close()
