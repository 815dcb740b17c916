"""Student sweeps: one set of teachers, many student trials; a grid (`--grid`) or a search (core.search).

A sweep is a row of the run store and each of its trials a run row (see core.search.engine, which
trains them); this module keeps the grid's entry point, `run_sweep`, and reading sweep folders back.
Teachers are trained (or resumed) once and their logits cached; scratch students are trained once
per distinct student setting. Points are ranked by the distilled students' val accuracy, so the
pick never looks at test; test is reported beside it.

Written into the output folder as it goes (a rerun resumes where it stopped):

  config.yaml, search.json      the base config and the search
  teachers/, cache/             as in a run
  scratch/<k>/, trials/<point>/ student checkpoints and weights (a trial's results.json)
  sweep.json, sweep.csv         one row per finished point, rewritten after every trial
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from core import config as config_mod
from core.config import RunConfig
from core.distill import kd_loss_doc
from core.ensemble import fits_on_val
from core.errors import OutputError
from core.models import model_card
from core.results.sweep import SweepFile, SweepRow, read_sweep_file
from core.search.rows import ROW_COLUMNS, SweepResult, best_row, sweep_row  # noqa: F401 - re-exported
from core.students import student_spec
from core.sweep_grid import (SWEEPABLE_FIELDS, SWEEPABLE_PREFIXES, Axis, check_grid, grid_points,  # noqa: F401
                             parse_axis, point_config, point_label, read_sweep_spec, scratch_setting,
                             sweep_trainings)
from core.train import CancelToken, EventBus


def run_sweep(base: RunConfig, axes: list[Axis], out: Path, seeds: int | None = None,
              events: EventBus | None = None, cancel: CancelToken | None = None,
              on_row: Callable[[SweepRow], None] | None = None, *, store: Any = None, source: str = "cli",
              **search_options: Any) -> SweepResult:
    """Train the teachers once, then a scratch and a distilled student per seed for every grid point.

    store: the run store that records the sweep and its trials (default: one in `out` itself).
    search_options: passed to core.search.run_search (heartbeat, shutting_down).
    """
    from core.search.engine import run_search
    from core.search.space import space_from_axes
    from core.search.spec import make_spec
    from core.store import RunStore

    check_grid(base, axes, seeds)
    spec = make_spec(base, search="grid", space=space_from_axes(axes), seeds=seeds)
    own = store is None
    store = RunStore(out) if own else store

    def on_trial(outcome: Any) -> None:
        if on_row is not None and outcome.row is not None:
            on_row(outcome.row)

    try:
        return run_search(base, spec, Path(out), store=store, events=events, cancel=cancel, source=source,
                          on_trial=on_trial, **search_options)
    finally:
        if own:
            store.close()


def check_point(cfg: RunConfig, data) -> None:
    """Fail early, naming the field, on an unknown loss, scheme or student model in a grid point."""
    fits_on_val(cfg.ensemble.scheme)
    kd_loss_doc(cfg.distill.loss)
    model_card(student_spec(cfg), data.num_classes, data.in_chans, data.image_size, field="student.model")


def format_sweep(result: SweepResult) -> str:
    """Plain-text table of a sweep (rows as models or dicts), the picked row marked with '*'.

    A search's rows also show their trial number, and the student's latency and size when measured.
    """
    from core.tables import Column, as_dict, fixed, millions, plus_minus, text_table

    rows = [{**as_dict(r), "_best": i == result.best} for i, r in enumerate(result.rows)]
    columns = [Column("", lambda r: "*" if r["_best"] else "", left=True)]
    if any(r.get("trial") is not None for r in rows):
        columns.append(Column("trial", "trial"))
    columns += [
        Column("point", "point", left=True),
        Column("kd val", plus_minus("kd_val_acc", "kd_val_acc_std")),
        Column("kd test acc", plus_minus("kd_test_acc_mean", "kd_test_acc_std")),
        Column("scratch test acc", plus_minus("scratch_test_acc_mean", "scratch_test_acc_std")),
        Column("paired gain", plus_minus("paired_gain_mean", "paired_gain_std", sign=True)),
        Column("recovery", "gain_recovery", fixed(2)),
    ]
    if any(r.get("latency_ms") is not None for r in rows):
        columns += [Column("latency ms", "latency_ms", fixed(3)), Column("params", "student_params", millions)]
    return text_table(rows, columns)


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
