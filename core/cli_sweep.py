"""`kdlab sweep` (a grid or an Optuna search over student settings) and `kdlab sweeps` (list them).

Every sweep is a row of the run store and each trial a run row, so `kdlab runs`, the Runs and
Compare pages open trials like any run; the study is in `<store>/optuna.db` for optuna-dashboard.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from core.cli_common import (EXIT_CANCELLED, ProgressBars, check_store_folder, config_source, data_dir_of,
                             load_config, quiet_option, store_option)
from core.errors import Cancelled, KdlabError
from core.store import DEFAULT_DIR, ENV_VAR, RunStore, new_run_id
from core.tables import Column, fixed, text_table


def _space(grid: tuple[str, ...], space: tuple[str, ...], search: str | None) -> tuple[str, list[Any]]:
    """(search, dimensions) from --grid / --space / --search; --grid alone means --search grid."""
    from core.search.space import parse_dimension, space_from_axes
    from core.sweep_grid import parse_axis

    if grid and space:
        raise KdlabError("--grid", "--grid and --space are two ways to give the space", "use one of them")
    if grid:
        if search not in (None, "grid"):
            raise KdlabError("--grid", f"--grid lists a grid, but --search is {search}",
                             f"write the space as --space FIELD=a,b,c for --search {search}")
        return "grid", space_from_axes([parse_axis(g) for g in grid])
    return search or "tpe", [parse_dimension(s) for s in space]


@click.command()
@config_source("Override a base config value (teachers, data, train settings are fixed for the sweep).")
@click.option("--grid", "grid", multiple=True, metavar="FIELD=V1,V2,...",
              help="A swept field and its values, e.g. --grid distill.temperature=1,2,4 (repeatable: the "
                   "grid is every combination). Fields: distill.*, student.*, ensemble.scheme.")
@click.option("--search", type=click.Choice(["grid", "random", "tpe", "nsga2"]), default=None,
              help="Optuna's sampler (default: grid with --grid, else tpe).")
@click.option("--space", "space", multiple=True, metavar="FIELD=LOW..HIGH[:log] | FIELD=a,b,c",
              help="A searched field: a range (log scale with :log) or a list of values (repeatable).")
@click.option("--trials", type=int, default=None,
              help="Trials to finish, pruned and failed ones included (default: the whole grid).")
@click.option("--objective", default="val_acc", show_default=True, metavar="val_acc[,latency_ms|params]",
              help="What to optimise; two objectives give a Pareto set and the pick rule says which ships.")
@click.option("--prune", type=click.Choice(["none", "median", "asha"]), default="none", show_default=True,
              help="Stop hopeless trials early by their first student's val accuracy per epoch.")
@click.option("--seeds", type=click.IntRange(1, 20), default=None,
              help="Student seeds per trial (default: student.seeds of the config); a trial's value is the mean.")
@click.option("--sampler-seed", type=int, default=0, show_default=True, help="Seed of the sampler.")
@click.option("--study", default=None, help="Optuna study name (default: the sweep's id).")
@click.option("--executor", default="local", show_default=True, metavar="local|processes|ray",
              help="Where trials run: one at a time in this process, in --workers processes on this machine, "
                   "or as Ray Tune trials (pip install 'kdlab[ray]').")
@click.option("--ray-address", default=None, metavar="ADDR",
              help="An existing Ray cluster for --executor ray (default: $RAY_ADDRESS, else a local Ray "
                   "started for the sweep).")
@click.option("--gpus-per-trial", type=float, default=0.0, show_default=True, metavar="SHARE",
              help="For --executor ray: each trial's share of a GPU (0.25: four small students on one GPU).")
@click.option("--workers", type=int, default=None,
              help="Worker processes for --executor processes (default: one per core; each gets cores // K "
                   "torch threads).")
@click.option("--out", type=click.Path(),
              help="Folder for teachers, cache and trials (default: a new sweep-* folder in the run store). "
                   "Run the same command with the same --out again to resume.")
@store_option(f"Run store that records the sweep and its trials (default ${ENV_VAR} or ./{DEFAULT_DIR}).")
@quiet_option
def sweep(config_file: str | None, preset_name: str | None, overrides: tuple[str, ...], grid: tuple[str, ...],
          search: str | None, space: tuple[str, ...], trials: int | None, objective: str, prune: str,
          seeds: int | None, sampler_seed: int, study: str | None, executor: str, gpus_per_trial: float,
          workers: int | None, ray_address: str | None, out: str | None, store_dir: str | None,
          quiet: bool) -> None:
    """Student search: train the teachers once, then KD and scratch students for every trial.

    Trials are ranked by the distilled students' val accuracy (and latency or size with a second
    objective); test accuracy, the paired KD - scratch gain and gain recovery are reported beside it.
    """
    from core.search.spec import make_spec

    cfg = load_config(config_file, preset_name, overrides)
    algorithm, dims = _space(grid, space, search)
    spec = make_spec(cfg, search=algorithm, space=dims, trials=trials, objectives=objective, prune=prune,
                     seeds=seeds, sampler_seed=sampler_seed, study=study, executor=executor, workers=workers,
                     ray_address=ray_address, gpus_per_trial=gpus_per_trial)
    data_dir = data_dir_of(store_dir)
    check_store_folder(data_dir)
    out_dir = Path(out) if out else data_dir / f"sweep-{new_run_id(cfg.name)}"
    _run(cfg, spec, out_dir, data_dir, quiet)


def _run(cfg: Any, spec: Any, out: Path, data_dir: Path, quiet: bool) -> None:
    from core.search.engine import run_search
    from core.train import CancelToken, EventBus

    n_seeds = spec.seeds or cfg.student.seeds
    where = {"local": "", "processes": f", {spec.workers} worker processes",
             "ray": f", {spec.workers} Ray trials at once"}[spec.executor]
    click.echo(f"kdlab sweep: {cfg.name}, {spec.search} search, {spec.trials} trial(s) x {n_seeds} seed(s){where} "
               f"into {out}; teachers trained once; store {data_dir}", err=True)
    cancel = CancelToken()
    events = EventBus(ProgressBars(enabled=not quiet))

    def on_trial(outcome: Any) -> None:
        row = outcome.row
        if row is None:
            click.echo(f"trial {outcome.run_id}: {outcome.status}", err=True)
            return
        val = "" if row.kd_val_acc is None else f" (val {row.kd_val_acc:.4f})"
        click.echo(f"done: {row.point}: KD {row.kd_test_acc_mean:.4f} vs scratch "
                   f"{row.scratch_test_acc_mean:.4f}{val}", err=True)

    def print_warning(event) -> None:
        if event.kind == "info" and event.message.startswith("warning: "):
            click.echo(event.message, err=True)

    events.subscribe(print_warning)
    with RunStore(data_dir) as store:
        try:
            result = run_search(cfg, spec, out, store=store, events=events, cancel=cancel, source="cli",
                                on_trial=on_trial)
        except (Cancelled, KeyboardInterrupt):
            cancel.cancel()
            click.echo(f"cancelled: finished trials and checkpoints are kept; resume with the same command and "
                       f"--out {out}", err=True)
            sys.exit(EXIT_CANCELLED)
    _print(result, spec, out)


def resume_sweep(store: RunStore, sweep_id: str, quiet: bool) -> None:
    """`kdlab resume SWEEP_ID`: the stored search again in its own folder; finished trials are kept."""
    from core import config as config_mod
    from core.lifecycle import check_resumable
    from core.search.spec import SearchSpec

    record = store.get_sweep(sweep_id)
    check_resumable(sweep_id, record.status)
    data_dir = store.data_dir
    store.close()
    _run(config_mod.validate(record.config), SearchSpec.model_validate(record.spec), record.sweep_dir, data_dir,
         quiet)


def _print(result: Any, spec: Any, out: Path) -> None:
    from core.sweep import format_sweep

    click.echo(format_sweep(result))
    counts = result.counts()
    click.echo("\ntrials: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if spec.multi_objective:
        front = [t for t in result.trials if t.pareto]
        click.echo(f"Pareto set ({', '.join(spec.objectives)}): " +
                   "; ".join(f"#{t.number} " + " ".join(f"{k}={v:.4g}" for k, v in (t.values or {}).items())
                             for t in front))
    click.echo(f"pick rule: {result.pick_rule}")
    if result.best is not None:
        best = result.rows[result.best]
        sets = " ".join(f"--set {name}={best.value(name)}" for name in result.axes)
        click.echo(f"* picked trial {best.trial}: {best.point} (val {best.kd_val_acc:.4f}; test "
                   f"{best.kd_test_acc_mean:.4f} +- {best.kd_test_acc_std:.4f}); run {best.run_id}; train it: "
                   f"kdlab run ... {sets}")
    click.echo(f"results: {out / 'sweep.csv'}")


@click.command()
@store_option()
def sweeps(store_dir: str | None) -> None:
    """List the sweeps of the run store, newest first, with their trials by state and their pick."""
    store = RunStore(data_dir_of(store_dir))
    found = store.sweeps()
    if not found:
        click.echo(f"no sweeps in {store.data_dir}", err=True)
        return
    rows = []
    for s in found:
        counts = s.summary.get("trials", {})
        rows.append({"id": s.id, "status": s.status.value, "search": s.spec.get("search", "?"),
                     "trials": f"{sum(counts.values())}/{s.spec.get('trials', '?')}",
                     "states": " ".join(f"{n} {k}" for k, n in sorted(counts.items())),
                     "best_val": s.summary.get("best_val_acc"), "best": s.best or ""})
    click.echo(text_table(rows, [Column("sweep", "id", left=True), Column("status", "status", left=True),
                                 Column("search", "search", left=True), Column("trials", "trials"),
                                 Column("states", "states", left=True), Column("best val", "best_val", fixed(4)),
                                 Column("picked run", "best", left=True)]))
