"""RUN and --model to one model: its weights, how to rebuild it, its data and where it came from.

RUN is a run id of the store, a run folder (results.json) or a sweep folder (sweep.json). Model names:

  run    student/kd, student/scratch            the seed with the best val accuracy (never test)
         student/kd/s1, student/kd-r2/s1        a distilled seed (last residual round, or round r)
         student/scratch/s0, teacher/<label>/s0, teacher/<label> (its val-best draw)
  sweep  trial/3 (that point's val-best seed), trial/3/student/kd/s1, teacher/<label>/s0

Without --model: the distilled student with the best val accuracy (in a sweep: of the val-best point).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from typing import TYPE_CHECKING

import yaml

from core import config as config_mod
from core.config import RunConfig
from core.errors import KdlabError
from core.export.errors import ExportError
from core.lifecycle import RunStatus
from core.results import ResultsError, RunResults, StudentEntry, TeacherEntry, read_results

if TYPE_CHECKING:  # torch and timm load only when a model is built: listing a run's models stays light
    from torch import nn

    from core.data import DataBundle
    from core.models import ModelSpec

log = logging.getLogger(__name__)

RUN_FIX = "give a run id from `kdlab runs` (--store DIR for another store), a run folder or a sweep folder"


@dataclass
class Candidate:
    """One exportable model: its name, role, seed, weights (relative to the folder) and val scores."""

    name: str
    role: Literal["student", "teacher"]
    seed: int
    weights: str
    student_kind: str | None = None          # 'kd' or 'scratch' for students
    label: str | None = None                 # teacher member label
    val_acc: float | None = None
    val_nll: float | None = None
    entry: StudentEntry | TeacherEntry | None = None
    aliases: tuple[str, ...] = ()            # other names --model accepts for it (student/kd-r1/s0)


@dataclass
class Source:
    """The model to export and everything the card needs about where it came from."""

    kind: Literal["run", "sweep"]
    folder: Path                             # the run or sweep folder
    run_id: str | None                       # store id, when the store knows the folder
    cfg: RunConfig                           # the run's config (a sweep trial: its point's config)
    model: Candidate
    selection: str                           # how the model was picked, in words
    default_pick: bool                       # picked by the default rule (no --model)
    results: RunResults | None = None        # runs only
    trial: int | None = None                 # sweeps only
    sweep_row: dict | None = None            # sweeps only: the point's row of sweep.json
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def spec(self) -> ModelSpec:
        """How to rebuild the model: the student's or the teacher's spec, without any starting weights."""
        from core.models import ModelSpec
        from core.prepare import teacher_spec
        from core.students import student_spec
        if self.model.role == "student":
            return student_spec(self.cfg)
        member = next(t for t, label in zip(self.cfg.teachers, teacher_labels(self.cfg)) if label == self.model.label)
        spec = teacher_spec(member)
        return ModelSpec(spec.name, width=spec.width, depth=spec.depth)  # the trained weights replace any start

    @property
    def weights_path(self) -> Path:
        return self.folder / self.model.weights


def teacher_labels(cfg: RunConfig) -> list[str]:
    """Each teacher member's unique label, as the run named its folders (core.prepare's rule)."""
    labels, seen = [], {}
    for t in cfg.teachers:
        seen[t.display] = seen.get(t.display, 0) + 1
        labels.append(t.display if seen[t.display] == 1 else f"{t.display}-{seen[t.display]}")
    return labels


def best_by_val(pool: list[Candidate]) -> Candidate | None:
    """Highest val accuracy, ties by lower val NLL, then lower seed (RunResults.best_student's rule)."""
    scored = [c for c in pool if c.val_acc is not None]
    if not scored:
        return None
    return max(scored, key=lambda c: (c.val_acc, -(c.val_nll if c.val_nll is not None else float("inf")), -c.seed))


def load_model(source: Source, data: DataBundle) -> nn.Module:
    """A fresh CPU build of the model with its trained weights (safetensors only), in eval mode."""
    from core.models import build_model
    from core.train.checkpoint import load_weights
    model = build_model(source.spec, data.num_classes, data.in_chans, image_size=data.image_size,
                        field="--model")
    try:
        load_weights(model, source.weights_path)
    except (OSError, RuntimeError, ValueError) as err:
        raise ExportError("--model", f"the weights of {source.model.name} ({source.weights_path}) cannot be "
                          f"loaded ({type(err).__name__}: {str(err).splitlines()[0][:120]})",
                          "the run folder is damaged; re-run its config to write them again") from None
    return model.eval()


# -- the run ----------------------------------------------------------------------------------

def _read_config(path: Path) -> RunConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ExportError("RUN", f"'{path}' cannot be read ({type(err).__name__})", RUN_FIX) from None
    try:
        return config_mod.validate(raw if isinstance(raw, dict) else {})
    except KdlabError as err:
        raise ExportError("RUN", f"'{path}' is not a valid kdlab config ({err})", RUN_FIX) from None


def _store_status(folder: Path, store_dir: Path | None) -> tuple[str | None, RunStatus | None]:
    """(run id, status) of the store's record of this folder; (None, None) when no store knows it."""
    from core.store import DB_NAME, RunStore, default_data_dir  # sqlite only when a store is asked
    data_dir = Path(store_dir) if store_dir else default_data_dir()
    if not (data_dir / DB_NAME).is_file():  # opening would create an empty store as a side effect
        return None, None
    with RunStore(data_dir) as store:
        record = store.find_by_dir(folder)
    return (record.id, record.status) if record is not None else (None, None)


def locate(run: str | Path, store_dir: Path | None = None) -> tuple[Path, str | None, RunStatus | None]:
    """(folder, run id, store status) of RUN: a folder as given, else a run id of the store."""
    path = Path(run).expanduser()
    if path.is_dir():
        run_id, status = _store_status(path.absolute(), store_dir)
        return path, run_id, status
    if path.exists():
        raise ExportError("RUN", f"'{run}' is a file, not a run folder", RUN_FIX)
    from core.store import DB_NAME, RunNotFound, RunStore, default_data_dir
    data_dir = Path(store_dir) if store_dir else default_data_dir()
    if not (data_dir / DB_NAME).is_file():
        raise ExportError("RUN", f"no folder '{run}' and no run store at '{data_dir}'", RUN_FIX)
    with RunStore(data_dir) as store:
        try:
            record = store.get_run(str(run))
        except RunNotFound:
            raise ExportError("RUN", f"no folder '{run}' and no run '{run}' in the store at '{data_dir}'",
                              RUN_FIX) from None
    if not record.run_dir.is_dir():
        raise ExportError("RUN", f"run {record.id}'s folder '{record.run_dir}' is missing (moved or deleted)",
                          "export from the folder where it now is")
    return record.run_dir, record.id, record.status


def _run_candidates(results: RunResults) -> list[Candidate]:
    out: list[Candidate] = []
    last = results.last_round
    for s in sorted(results.students, key=lambda s: (s.kind != "kd", -(s.round or 1), s.seed)):
        if s.kind == "scratch":
            name, aliases = f"student/scratch/s{s.seed}", ()
        elif (s.round or 1) == last:  # student/kd/sN is the last residual round's
            name, aliases = f"student/kd/s{s.seed}", (f"student/kd-r{s.round or 1}/s{s.seed}",)
        else:
            name, aliases = f"student/kd-r{s.round}/s{s.seed}", ()
        out.append(Candidate(name, "student", s.seed, s.weights, student_kind=s.kind, val_acc=s.val_acc,
                             val_nll=s.val_nll, entry=s, aliases=aliases))
    for t in results.teachers:
        out.append(Candidate(t.source, "teacher", t.seed, t.weights, label=t.name, val_acc=t.val_acc,
                             val_nll=t.val_nll, entry=t))
    return out


def _pick(name: str | None, candidates: list[Candidate], where: str) -> tuple[Candidate, str, bool]:
    """The candidate `name` stands for, with how it was picked and whether the default rule picked it."""
    named = {alias: c for c in candidates for alias in (c.name, *c.aliases)}
    if name is None or name in ("student/kd", "student/scratch"):
        kind = "scratch" if name == "student/scratch" else "kd"
        pool = [c for c in candidates if c.student_kind == kind and c.name.startswith(
            "student/scratch/" if kind == "scratch" else "student/kd/")]
        best = best_by_val(pool)
        if best is None:
            raise ExportError("--model", f"{where} has no {'distilled' if kind == 'kd' else 'scratch'} student "
                              "with a val score to pick from",
                              f"name one: {', '.join(c.name for c in candidates) or 'none'}")
        what = "distilled" if kind == "kd" else "scratch"
        return best, f"the {what} seed with the best val accuracy ({best.val_acc:.4f}; test not consulted)", \
            name is None
    if name in named:
        return named[name], "named with --model", False
    match = re.fullmatch(r"teacher/(.+)", name)
    if match:  # a member without a seed: its val-best draw
        best = best_by_val([c for c in candidates if c.role == "teacher" and c.label == match.group(1)])
        if best is not None:
            return best, f"the draw of teacher {match.group(1)} with the best val accuracy", False
    raise ExportError("--model", f"unknown model '{name}' in {where}",
                      f"pick one of: {', '.join(c.name for c in candidates) or 'none'}")


def _resolve_run(folder: Path, run_id: str | None, status: RunStatus | None, name: str | None) -> Source:
    where = f"run {run_id or folder}"
    results_path = folder / "results.json"
    if not results_path.is_file():
        if status in RunStatus.ACTIVE:
            raise ExportError("RUN", f"{where} is still {status} (no results yet)",
                              "wait until it finishes (`kdlab runs` shows its progress), then export")
        raise ExportError("RUN", f"'{folder}' holds no results.json", RUN_FIX)
    try:
        results = read_results(results_path)
    except ResultsError as err:
        raise ExportError("RUN", str(err), "re-run its config to write the results again") from None
    live = status if status is not None else (RunStatus.RUNNING if results.status == "running" else None)
    if live in RunStatus.ACTIVE:
        how = "the store says" if status is not None else "its results.json says"
        raise ExportError("RUN", f"{where} is still training ({how} {live})",
                          "wait until it finishes (`kdlab runs` shows its progress), then export")
    candidates = _run_candidates(results)
    wants_student = name is None or name.startswith("student/")
    if wants_student and ("students" not in results.stages_done or not results.students):
        done = ", ".join(results.stages_done) or "none"
        raise ExportError("RUN", f"{where} has no students (status {results.status}; stages done: {done})",
                          "resume it so its students train (`kdlab resume <id>`, or `kdlab run <folder>/config.yaml "
                          "--out <folder>`), or export a teacher with --model teacher/<name>/s<seed>")
    model, selection, default = _pick(name, candidates, where)
    cfg = _read_config(folder / "config.yaml")
    if not (folder / model.weights).is_file():
        raise ExportError("--model", f"{model.name}'s weights '{folder / model.weights}' are missing",
                          "the run folder is damaged; re-run its config to write them again")
    return Source("run", folder, run_id, cfg, model, selection, default, results=results, candidates=candidates)


# -- a sweep ----------------------------------------------------------------------------------

def _checkpoint_val(folder: Path) -> tuple[float | None, float | None]:
    """(val acc, val loss) at the best epoch, from a student's checkpoint state (last.json)."""
    try:
        best = json.loads((folder / "last.json").read_text()).get("best_val", {})
    except (OSError, ValueError) as err:
        log.warning("no val scores for %s (%s); it cannot be the val pick", folder, err)
        return None, None
    return best.get("val/acc"), best.get("val/loss")


def _sweep_candidates(folder: Path, sweep, cfg: RunConfig) -> list[Candidate]:
    out: list[Candidate] = []
    for i, row in enumerate(sweep.rows):
        per_seed: dict[int, tuple[int, Path]] = {}
        # A search names its trial folders by point; sweeps written before that, by row number.
        trial_dir = folder / (row.folder or f"trials/{i:03d}")
        for student in (trial_dir / "students").glob("kd-r*_s*"):
            match = re.fullmatch(r"kd-r(\d+)_s(\d+)", student.name)
            if match and (student / "model.safetensors").is_file():
                r, s = int(match.group(1)), int(match.group(2))
                if s not in per_seed or r > per_seed[s][0]:  # the last residual round of each seed
                    per_seed[s] = (r, student)
        for s, (_, student) in sorted(per_seed.items()):
            val_acc, val_nll = _checkpoint_val(student)
            out.append(Candidate(f"trial/{i}/student/kd/s{s}", "student", s,
                                 str((student / "model.safetensors").relative_to(folder)), student_kind="kd",
                                 val_acc=val_acc, val_nll=val_nll))
    for t, label in zip(cfg.teachers, teacher_labels(cfg)):
        for s in range(t.seeds):
            weights = Path("teachers") / f"{label}_s{s}" / "model.safetensors"
            if (folder / weights).is_file():
                val_acc, val_nll = _checkpoint_val(folder / weights.parent)
                out.append(Candidate(f"teacher/{label}/s{s}", "teacher", s, str(weights), label=label,
                                     val_acc=val_acc, val_nll=val_nll))
    return out


def _resolve_sweep(folder: Path, name: str | None) -> Source:
    from core.sweep import load_sweep
    try:
        sweep = load_sweep(folder)
    except KdlabError as err:
        raise ExportError("RUN", str(err), RUN_FIX) from None
    base = _read_config(folder / "config.yaml")
    candidates = _sweep_candidates(folder, sweep.file, base)
    where = f"sweep {folder}"
    trial: int | None = None
    if name is None or re.fullmatch(r"trial/\d+", name or ""):
        trial = sweep.file.best if name is None else int(name.split("/")[1])
        if trial is None:
            raise ExportError("RUN", f"{where} has no point with a val score yet",
                              "wait for its first point to finish, or name a model with --model")
        if not 0 <= trial < len(sweep.rows):
            raise ExportError("--model", f"{where} has points 0 to {len(sweep.rows) - 1}, not {trial}",
                              f"pick one of: {', '.join(f'trial/{i}' for i in range(len(sweep.rows)))}")
        pool = [c for c in candidates if c.name.startswith(f"trial/{trial}/")]
        model = best_by_val(pool)
        if model is None:
            raise ExportError("--model", f"point {trial} of {where} has no distilled student with a val score",
                              f"pick one of: {', '.join(c.name for c in candidates) or 'none'}")
        selection = (f"point {trial} ({sweep.rows[trial].point}), "
                     f"{'the val-best point, ' if name is None else ''}and its distilled seed with the best "
                     f"val accuracy ({model.val_acc:.4f}; test not consulted)")
        default = name is None
    else:
        model, selection, default = _pick(name, candidates, where)
        match = re.match(r"trial/(\d+)/", model.name)
        trial = int(match.group(1)) if match else None
    cfg = config_mod.validate(sweep.point_config(trial)) if trial is not None else base
    row = sweep.rows[trial].to_json() if trial is not None else None
    return Source("sweep", folder, None, cfg, model, selection, default, trial=trial, sweep_row=row,
                  candidates=candidates)


def resolve_source(run: str | Path, model: str | None = None, store_dir: Path | None = None) -> Source:
    """The model `model` names in RUN (default: the val-best distilled student); ExportError on bad input."""
    folder, run_id, status = locate(run, store_dir)
    if (folder / "sweep.json").is_file():
        return _resolve_sweep(folder, model)
    if (folder / "results.json").is_file() or (folder / "config.yaml").is_file() or status is not None:
        return _resolve_run(folder, run_id, status, model)
    raise ExportError("RUN", f"'{folder}' is neither a run folder (results.json) nor a sweep folder (sweep.json)",
                      RUN_FIX)


def model_names(run: str | Path, store_dir: Path | None = None) -> list[str]:
    """Every model name RUN can export, the default pick first."""
    source = resolve_source(run, None, store_dir)
    names = [c.name for c in source.candidates]
    names.remove(source.model.name)
    return [source.model.name, *names]
