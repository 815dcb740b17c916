"""Student sweeps: one set of teachers, many student trials (a grid over distillation settings).

Teachers are trained (or resumed) once and their logits cached, as in a run; every grid point then
trains only its distilled students, and scratch students are trained once per distinct student
setting, since their result does not depend on the distillation settings. Points are ranked by the
distilled students' val accuracy, so the pick never looks at test; test is reported beside it.

Written into the output folder as it goes (a rerun resumes from the students' checkpoints):

  config.yaml   the base config;  sweep.yaml  the axes
  teachers/, cache/             as in a run
  scratch/<k>/, trials/<i>/     student checkpoints and weights
  sweep.json, sweep.csv         one row per point, rewritten after every point
"""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from core import config as config_mod
from core.atomic import write_json, write_text
from core.cache import CacheStats
from core.config import RunConfig
from core.errors import KdlabError, ModelError, OutputError
from core.evaluate import gain_recovery_over_seeds, mean_std, probs_metrics
from core.distill import kd_loss_doc
from core.ensemble import fits_on_val
from core.models import model_card
from core.pipeline import FALLBACK_SCHEME, JsonlWriter
from core.prepare import config_fingerprint, prepare
from core.results import StudentEntry, TeacherEntry
from core.runlog import log_event, run_log
from core.results.sweep import SCORE_COLUMNS, SweepFile, SweepRow, read_sweep_file
from core.stages import ensemble_stage, teacher_stage, teaching_stage
from core.students import Teaching, student_spec, train_student
from core.sweep_grid import (SWEEPABLE_FIELDS, SWEEPABLE_PREFIXES, Axis, check_grid, grid_points,  # noqa: F401
                             parse_axis, point_config, point_label, read_sweep_spec, scratch_setting,
                             sweep_trainings)
from core.train import CancelToken, Event, EventBus

ROW_COLUMNS = SCORE_COLUMNS  # sweep.csv's score columns, after the axes


@dataclass
class SweepResult:
    """Rows (one per point, ROW_COLUMNS plus the point's fields) and the index of the val-best row."""

    axes: list[str]
    rows: list[SweepRow]
    best: int | None
    teachers: list[TeacherEntry]
    target_accs: dict[str, float]
    warnings: list[str]


def _scratch_key(cfg: RunConfig, with_views: bool) -> str:
    """The scratch students' folder name: a fingerprint of their setting (see scratch_setting)."""
    return config_fingerprint(*scratch_setting(cfg, with_views))


def _write_rows(rows: list[SweepRow], best: int | None, out: Path, axes: list[str],
                warnings: list[str]) -> None:
    fields = [*axes, *ROW_COLUMNS, "best"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for i, r in enumerate(rows):
        writer.writerow({**r.to_json(), "best": i == best})
    write_text(buf.getvalue(), out / "sweep.csv")
    sweep = SweepFile(axes=axes, best=best, rows=rows, warnings=warnings)
    write_json(sweep.to_json(), out / "sweep.json", indent=2)


def best_row(rows: list[SweepRow]) -> int | None:
    """The row with the highest mean KD val accuracy, ties broken by the lower val NLL, then by order.

    Val accuracy moves in steps of one val image, so ties are common on small val splits.
    """
    def key(i: int) -> tuple[float, float, int]:
        nll = rows[i].kd_val_nll
        return rows[i].kd_val_acc, -(nll if nll is not None else float("inf")), -i

    scored = [i for i, r in enumerate(rows) if r.kd_val_acc is not None]
    return max(scored, key=key) if scored else None


def run_sweep(base: RunConfig, axes: list[Axis], out: Path, seeds: int | None = None,
              events: EventBus | None = None, cancel: CancelToken | None = None,
              on_row: Callable[[SweepRow], None] | None = None) -> SweepResult:
    """Train the teachers once, then a scratch and a distilled student per seed for every grid point."""
    out = Path(out)
    events = events or EventBus()
    cancel = cancel or CancelToken()
    points = grid_points(axes)
    configs = [point_config(base, p, seeds) for p in points]  # every point is checked before training
    saved_axes = out / "sweep.yaml"
    axes_doc = {a.field: list(a.values) for a in axes}
    if saved_axes.is_file() and yaml.safe_load(saved_axes.read_text()) != axes_doc:
        raise KdlabError("--out", f"'{out}' holds a sweep over other axes", "choose a new --out folder")
    prep = prepare(base, out)  # also refuses a folder holding another config
    for cfg in configs:  # names and models of every point, before anything trains
        check_point(cfg, prep.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(base.to_yaml())
    saved_axes.write_text(yaml.safe_dump(axes_doc, sort_keys=False))
    writer = JsonlWriter(out / "events.jsonl")
    events.subscribe(writer)
    events.subscribe(log_event)
    try:
        with run_log(out):
            return _sweep(prep, points, configs, axes, out, events, cancel, on_row)
    finally:
        writer.close()


def check_point(cfg: RunConfig, data) -> None:
    """Fail early, naming the field, on an unknown loss, scheme or student model in a grid point."""
    fits_on_val(cfg.ensemble.scheme)
    kd_loss_doc(cfg.distill.loss)
    model_card(student_spec(cfg), data.num_classes, data.in_chans, data.image_size, field="student.model")


def _sweep(prep, points, configs, axes, out, events, cancel, on_row) -> SweepResult:
    stats = CacheStats()
    warnings: list[str] = list(prep.warnings)

    def warn(message: str) -> None:
        warnings.append(message)
        events.emit(Event("info", "sweep", message=f"warning: {message}"))

    events.emit(Event("stage", "teachers", message=f"training {prep.trainings} teacher draw(s)"))
    trained = teacher_stage(prep, out, events, cancel, stats, warn)
    if not trained.entries:
        raise ModelError("teachers", "every teacher draw diverged (non-finite loss or logits)",
                         "lower train.lr, or check the teachers' weights files")
    _, combined = ensemble_stage(prep, trained.stack(), events)
    target_accs = {name: probs_metrics(c.probs["test"], prep.data.test.y)["acc"] for name, c in combined.items()}
    scratch: dict[str, list[StudentEntry]] = {}
    # Points with the same target share it, so the view cache is read once.
    teachings: dict[tuple[str, str, int], Teaching] = {}
    rows: list[SweepRow] = []
    names = [a.field for a in axes]
    best = None
    for i, (point, cfg) in enumerate(zip(points, configs)):
        events.emit(Event("stage", "sweep", message=f"point {i + 1}/{len(points)}: {point_label(point)}",
                          metrics={"point": i + 1, "points": len(points)}))
        scheme = cfg.ensemble.scheme if cfg.ensemble.scheme in combined else FALLBACK_SCHEME
        if scheme != cfg.ensemble.scheme:
            warn(f"ensemble.scheme: '{cfg.ensemble.scheme}' could not be fitted; point {i + 1} learns "
                 f"from '{FALLBACK_SCHEME}'")
        d = cfg.distill
        teaching_key = (scheme, d.teaching, d.view_stride)
        if teaching_key not in teachings:
            teachings[teaching_key] = teaching_stage(replace(prep, cfg=cfg), combined[scheme], trained.draws, out,
                                                     stats)
        teaching = teachings[teaching_key]
        key = _scratch_key(cfg, teaching.views is not None)
        trial = cfg.to_dict()
        trial["student"].pop("seeds")  # more seeds later must not retrain the earlier ones
        fingerprint = config_fingerprint(trial)
        sc_list = scratch.setdefault(key, [])
        kd_entries = []
        for s in range(cfg.student.seeds):
            if s >= len(sc_list):
                run = train_student(cfg, prep.data, "scratch", s, out / "scratch" / key, events, cancel, teaching,
                                    fingerprint=key)
                sc_list.append(run.entry)
            kd = train_student(cfg, prep.data, "kd", s, out / "trials" / f"{i:03d}", events, cancel, teaching,
                               fingerprint=fingerprint)
            kd_entries.append(kd.entry)
        sc_entries = sc_list[:cfg.student.seeds]
        rows.append(_row(point, names, kd_entries, sc_entries, target_accs[scheme]))
        best = best_row(rows)
        _write_rows(rows, best, out, names, warnings)
        if on_row is not None:
            on_row(rows[-1])
    return SweepResult(names, rows, best, trained.entries, target_accs, warnings)


def _row(point: dict[str, Any], names: list[str], kd: list[StudentEntry], scratch: list[StudentEntry],
         ensemble_acc: float) -> SweepRow:
    kd_acc = mean_std([e.test_acc for e in kd])
    sc_acc = mean_std([e.test_acc for e in scratch])
    gains = mean_std([k.test_acc - s.test_acc for k, s in zip(kd, scratch)])
    recovery = gain_recovery_over_seeds([e.test_acc for e in kd], [e.test_acc for e in scratch], ensemble_acc)
    vals = [e.val_acc for e in kd if e.val_acc is not None]
    val_nlls = [e.val_nll for e in kd if e.val_nll is not None]
    return SweepRow(**{n: point[n] for n in names}, point=point_label(point),
                    kd_val_acc=mean_std(vals)["mean"] if vals else None,
                    kd_val_nll=mean_std(val_nlls)["mean"] if val_nlls else None,
                    kd_test_acc_mean=kd_acc["mean"], kd_test_acc_std=kd_acc["std"],
                    kd_test_nll_mean=mean_std([e.test_nll for e in kd])["mean"],
                    scratch_test_acc_mean=sc_acc["mean"], scratch_test_acc_std=sc_acc["std"],
                    paired_gain_mean=gains["mean"], paired_gain_std=gains["std"],
                    ensemble_test_acc=ensemble_acc, gain_recovery=recovery["of_means"],
                    gain_recovery_per_seed_mean=recovery["mean"], gain_recovery_per_seed_std=recovery["std"],
                    seeds=len(kd), kd_train_seconds=mean_std([e.train_seconds for e in kd])["mean"])


def format_sweep(result: SweepResult) -> str:
    """Plain-text table of a sweep (rows as models or dicts), the val-best row marked with '*'."""
    from core.tables import Column, as_dict, fixed, plus_minus, text_table

    rows = [{**as_dict(r), "_best": i == result.best} for i, r in enumerate(result.rows)]
    return text_table(rows, [
        Column("", lambda r: "*" if r["_best"] else "", left=True),
        Column("point", "point", left=True),
        Column("kd val", "kd_val_acc", fixed(4)),
        Column("kd test acc", plus_minus("kd_test_acc_mean", "kd_test_acc_std")),
        Column("scratch test acc", plus_minus("scratch_test_acc_mean", "scratch_test_acc_std")),
        Column("paired gain", plus_minus("paired_gain_mean", "paired_gain_std", sign=True)),
        Column("recovery", "gain_recovery", fixed(2)),
    ])


@dataclass
class LoadedSweep:
    """A sweep folder read back: its validated sweep.json and its base config (a plain dict)."""

    folder: Path
    file: SweepFile
    config: dict[str, Any]

    @property
    def rows(self) -> list[SweepRow]:
        return self.file.rows

    def point_config(self, index: int) -> dict[str, Any]:
        """The config dict of row `index`: the base config with the point's values applied."""
        raw = copy.deepcopy(self.config)
        row = self.file.rows[index]
        for name in self.file.axes:
            config_mod.set_field(raw, name, row.value(name))
        return raw


def load_sweep(folder: Path) -> LoadedSweep:
    """A finished (or running) sweep's validated `sweep.json` plus its base config."""
    folder = Path(folder)
    path = folder / "sweep.json"
    if not path.is_file():
        raise OutputError("sweep folder", f"'{folder}' holds no sweep.json",
                          "give the --out folder of a `kdlab sweep` (it appears after the first point)")
    sweep = read_sweep_file(path)
    try:
        base = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError) as err:
        raise OutputError("sweep folder", f"'{folder}/config.yaml' cannot be read ({type(err).__name__})",
                          "run the sweep again into a new --out folder") from None
    if not isinstance(base, dict):
        raise OutputError("sweep folder", f"'{folder}/config.yaml' is not a config mapping",
                          "run the sweep again into a new --out folder")
    return LoadedSweep(folder, sweep, base)


def point_raw_config(sweep: LoadedSweep, index: int) -> dict[str, Any]:
    """The config dict of row `index` of a loaded sweep: its base config with the point applied."""
    return sweep.point_config(index)


def find_sweeps(root: Path) -> list[Path]:
    """Sweep folders directly below `root` (the run store's folder by default), newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob("*/sweep.json")]
    return sorted(found, key=lambda p: (p / "sweep.json").stat().st_mtime, reverse=True)
