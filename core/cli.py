"""`kdlab` command line: the engine without the dashboard, for reproducible runs and sweeps.

A KdlabError from any command is printed as `error: <one line>` on stderr with exit status 2 (see
`KdlabGroup`); Ctrl-C stops a run or a sweep with its checkpoints kept and exit status 130.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from core import config as config_mod
from core.cli_common import (EXIT_CANCELLED, KdlabGroup, ProgressBars, check_store_folder,  # noqa: F401
                             config_source, configure_logging, data_dir_of, format_teacher_table, load_config,
                             quiet_option, store_option)
from core.errors import Cancelled, KdlabError
from core.cli_sweep import sweep, sweeps
from core.export.cli import export_command
from core.lifecycle import RunStatus, check_resumable, one_line
from core.store import (NothingToRecover, RunStore, expected_trainings, new_run_id,
                        record_run, recover_store)
from core.store.listing import format_reindex, format_runs
from core.tables import Column, millions, text_table

# -- commands ------------------------------------------------------------------------------------

@click.group(cls=KdlabGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdlab")
@click.option("-v", "--verbose", is_flag=True, help="Log what kdlab does (debug messages) on stderr.")
def main(verbose: bool) -> None:
    """kdlab: ensemble image classifiers and distil the ensemble into one small student."""
    configure_logging(verbose)


@main.command()
@config_source()
@click.option("--out", type=click.Path(),
              help="Folder for config, events and results (default: a new folder in the run store).")
@store_option()
@click.option("--no-store", is_flag=True, help="Do not record the run in the run store (needs --out).")
@quiet_option
def run(config_file: str | None, preset_name: str | None, overrides: tuple[str, ...], out: str | None,
        store_dir: str | None, no_store: bool, quiet: bool) -> None:
    """Train the teachers of a config (file or preset) and write results into --out."""
    from core.pipeline import prepare

    if no_store and not out:
        raise KdlabError("--out", "--no-store needs an output folder", "give --out DIR, or drop --no-store")
    cfg = load_config(config_file, preset_name, overrides)
    data_dir = data_dir_of(store_dir)
    if not (no_store and out):  # the store folder gets the run's record, or its files
        check_store_folder(data_dir)
    run_id = new_run_id(cfg.name)
    out_dir = Path(out) if out else data_dir / run_id
    prep = prepare(cfg, out_dir)
    store = None if no_store else RunStore(data_dir)
    hint = "run the same command again to resume" if out else \
        f"resume with `kdlab resume {run_id}" + (f" --store {store_dir}`" if store_dir else "`")
    _run_prepared(prep, out_dir, store, run_id, quiet, hint)


def _run_prepared(prep, out: Path, store: RunStore | None, run_id: str, quiet: bool, resume_hint: str,
                  resumed: bool = False) -> None:
    """Run a prepared experiment, recording it in the store (if any), and print the tables."""
    from core.pipeline import run_experiment
    from core.train import CancelToken, EventBus

    cfg = prep.cfg
    click.echo(f"kdlab: {cfg.name} on {prep.data.name} ({len(prep.data.train)}/{len(prep.data.val)}/"
               f"{len(prep.data.test)} train/val/test images, {prep.data.num_classes} classes), "
               f"device {prep.device}, {prep.trainings} teacher training(s)", err=True)
    click.echo(prep.decomposition_plan, err=True)
    for warning in prep.warnings:
        click.echo(f"warning: {warning}", err=True)
    cancel = CancelToken()
    events = EventBus(ProgressBars(enabled=not quiet))
    recording = nullcontext(None)
    if store is not None:
        run_id = _record_start(store, cfg, out, run_id, resumed)
        click.echo(f"run {run_id} in {store.data_dir}", err=True)
        recording = record_run(store, run_id, out, expected_trainings(cfg))
    try:
        with recording as recorder:
            if recorder is not None:
                events.subscribe(recorder)
            results = run_experiment(prep, out, events, cancel)
    except (Cancelled, KeyboardInterrupt):
        cancel.cancel()
        click.echo(f"cancelled: checkpoints are kept; {resume_hint}", err=True)
        sys.exit(EXIT_CANCELLED)
    _print_results(results, out, len(prep.warnings))


def _print_results(results: Any, out: Path, warnings_shown: int) -> None:
    """The teacher and comparison tables and the headline of a finished run (results as a model or a dict)."""
    from core.report import format_table
    from core.results import read_results

    res = read_results(results)
    click.echo(format_teacher_table(res.teachers))
    click.echo("")
    click.echo(format_table(res.comparison))
    if res.summary is not None:
        teaching = res.teaching.text() if res.teaching is not None else "unknown teaching"
        click.echo(f"\nstudent/teacher params {res.summary.student_to_teacher_params:.2f}x; distilled from "
                   f"ensemble/{res.summary.target_scheme} ({teaching}); gain recovery "
                   f"{res.summary.gain_recovery.text()}")
    if res.teacher_budget is not None and res.teacher_budget.shown:
        from core.report import format_budget_table
        click.echo("\n" + format_budget_table(res.teacher_budget))
    click.echo(res.diagnostics.decomposition_text() if res.diagnostics is not None else "diagnostics: not computed")
    for warning in res.warnings[warnings_shown:]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"\nresults: {Path(out) / 'results.json'}  ({res.seconds:.1f} s)")


def _record_start(store: RunStore, cfg, out: Path, run_id: str, resumed: bool) -> str:
    """Record the run as running: a new run, or (same folder run again) the earlier record of it."""
    if resumed:
        store.requeue(run_id)
        store.start_run(run_id)
        return run_id
    earlier = store.find_by_dir(out)
    if earlier is not None:
        if earlier.status in RunStatus.ACTIVE:
            raise KdlabError("--out", f"'{out}' is being written by run {earlier.id} ({earlier.status})",
                             "wait for it, or choose another --out folder")
        store.start_run(earlier.id)
        return earlier.id
    return store.create_run(cfg, source="cli", status=RunStatus.RUNNING, run_id=run_id, run_dir=out)


@main.command()
@click.argument("run_id")
@store_option()
@quiet_option
def resume(run_id: str, store_dir: str | None, quiet: bool) -> None:
    """Continue an interrupted, failed or cancelled run (or sweep) of the store from its checkpoints."""
    from core.pipeline import prepare

    store = RunStore(data_dir_of(store_dir))
    if run_id in {s.id for s in store.sweeps()}:
        from core.cli_sweep import resume_sweep

        resume_sweep(store, run_id, quiet)
        return
    record = store.get_run(run_id)
    check_resumable(run_id, record.status)
    if record.started is not None and not record.dir_exists:
        record = store.get_run(run_id, require_dir=True)  # raises the missing-folder error
    prep = prepare(config_mod.validate(record.config), record.run_dir)
    _run_prepared(prep, record.run_dir, store, run_id, quiet, "run the same command again to resume",
                  resumed=True)


@main.group(invoke_without_command=True)
@store_option()
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in RunStatus]),
              help="Only runs with this status (repeatable).")
@click.option("--limit", default=30, show_default=True, help="Show at most this many runs, newest first.")
@click.pass_context
def runs(ctx: click.Context, store_dir: str | None, statuses: tuple[str, ...], limit: int) -> None:
    """List the runs in the run store (CLI and dashboard runs alike); `kdlab runs reindex` rebuilds it."""
    ctx.obj = store_dir  # a subcommand without its own --store uses this one
    if ctx.invoked_subcommand is not None:
        return
    store = RunStore(data_dir_of(store_dir))
    df = store.list_runs(list(statuses) or None, limit=limit)
    if df.empty:
        click.echo(f"no runs in {store.data_dir}", err=True)
        return
    click.echo(format_runs(df))


@runs.command("reindex")
@store_option()
@click.pass_context
def runs_reindex(ctx: click.Context, store_dir: str | None) -> None:
    """Add to the store the run folders in its folder that it does not know (after a lost or damaged kdlab.db)."""
    store = RunStore(data_dir_of(store_dir or ctx.obj))
    click.echo(format_reindex(store.reindex()))


@main.group()
def store() -> None:
    """Look after the run store itself (kdlab.db)."""


@store.command("recover")
@store_option()
def store_recover(store_dir: str | None) -> None:
    """Move a damaged kdlab.db aside (kept as kdlab.db.damaged-<time>), start a fresh store, reindex the run folders."""
    data_dir = data_dir_of(store_dir)
    try:
        moved = recover_store(data_dir)
    except NothingToRecover as err:
        click.echo(f"{one_line(err.problem)}; reindexing its folder")
    else:
        click.echo(f"moved the damaged store aside to {moved} (nothing was deleted); started a fresh store")
    click.echo(format_reindex(RunStore(data_dir).reindex()))


@main.command()
@click.option("--filter", "pattern", default=None, help="Wildcard pattern, e.g. 'resnet*' or '*mobilenet*'.")
@click.option("--limit", default=50, show_default=True, help="Show at most this many names.")
def models(pattern: str | None, limit: int) -> None:
    """List timm model names with their parameter counts."""
    from core.models import list_models

    rows = list_models(pattern, limit=limit)
    if not rows:
        click.echo(f"no timm model matches '{pattern}'", err=True)
        sys.exit(1)
    click.echo(text_table(rows, [Column("model", "name", left=True), Column("params", "params", millions)],
                          header=False))


@main.command()
def presets() -> None:
    """List the bundled presets."""
    rows = []
    for name in config_mod.list_presets():
        cfg = config_mod.preset(name)
        rows.append({"name": name, "data": cfg.get("data", {}).get("name", "?"),
                     "teachers": ", ".join(t["model"] for t in cfg.get("teachers", []))})
    click.echo(text_table(rows, [Column("preset", "name", left=True), Column("data", "data", left=True),
                                 Column("teachers", "teachers", left=True)]))


@main.command()
def datasets() -> None:
    """List the data sets kdlab can load."""
    from core.data import list_datasets

    for name in list_datasets():
        click.echo(name)


@main.command("show-config")
@config_source()
def show_config(config_file: str | None, preset_name: str | None, overrides: tuple[str, ...]) -> None:
    """Print the full, validated config (every default filled in) as YAML."""
    click.echo(load_config(config_file, preset_name, overrides).to_yaml(), nl=False)


main.add_command(export_command)
main.add_command(sweep)
main.add_command(sweeps)


if __name__ == "__main__":
    main()
