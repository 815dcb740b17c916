"""`kdlab` command line: the engine without the dashboard, for reproducible runs and sweeps."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from core import config as config_mod
from core.errors import Cancelled, KdlabError
from core.report import format_table
from core.store import (DEFAULT_DIR, ENV_VAR, RUN_STATUSES, Heartbeat, RunStore, StoreRecorder,
                        default_data_dir, expected_trainings, new_run_id)


def _fail(err: KdlabError) -> None:
    click.echo(f"error: {err}", err=True)
    sys.exit(2)


class ProgressBars:
    """Event subscriber drawing one tqdm bar per model being trained (on stderr)."""

    def __init__(self, enabled: bool = True) -> None:
        from tqdm import tqdm
        self._tqdm = tqdm
        self.enabled = enabled
        self._bar = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if event.kind == "start":
            self._close()
            total = int(event.metrics.get("total_steps", 0))
            self._bar = self._tqdm(total=total, desc=event.source, unit="step", leave=True,
                                   file=sys.stderr, dynamic_ncols=True)
            self._bar.update(event.step or 0)
        elif self._bar is not None and event.kind in ("step", "epoch") and event.step is not None:
            self._bar.update(event.step - self._bar.n)
            if event.kind == "epoch":
                self._bar.set_postfix(epoch=event.epoch, val_acc=f"{event.metrics['val/acc']:.3f}",
                                      val_loss=f"{event.metrics['val/loss']:.3f}")
        elif event.kind in ("done", "failed", "cancelled"):
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_teacher_table(teachers: list[dict]) -> str:
    """A plain-text table of teacher results."""
    header = f"{'teacher':<26}{'seed':>5}{'params':>10}{'MFLOPs':>9}{'test acc':>10}{'test nll':>10}{'train s':>9}"
    lines = [header, "-" * len(header)]
    for t in teachers:
        lines.append(f"{t['name']:<26}{t['seed']:>5}{t['params'] / 1e6:>9.2f}M{t['flops'] / 1e6:>9.1f}"
                     f"{t['test_acc']:>10.4f}{t['test_nll']:>10.4f}{t['train_seconds']:>9.1f}")
    return "\n".join(lines)


def _recovery_text(recovery: dict) -> str:
    if recovery.get("of_means") is None:
        return "undefined (the ensemble is not more accurate than the scratch student)"
    text = f"{recovery['of_means']:.2f} of the means"
    if recovery.get("mean") is not None:
        text += f"; per seed {recovery['mean']:.2f} +- {recovery['std']:.2f} (n={recovery['n']})"
    return text


def _teaching_text(teaching: dict) -> str:
    if teaching["mode"] == "views":
        return f"{teaching['views']['views']} cached views"
    return f"{teaching['mode']} teachers" if teaching["mode"] == "live" else "plain logit cache"


def _diagnostics_text(diag: dict) -> str:
    """One line: the cross-entropy decomposition of the logit-average ensemble on test."""
    if "combiners" not in diag:
        return f"diagnostics: {diag.get('error', 'not computed')}"
    t = diag["combiners"]["mean_logit"]["terms"]
    text = (f"mean_logit test loss {t['loss']:.4f} = member loss {t['member_loss']:.4f} - diversity "
            f"{t['diversity']:.4f}")
    if t.get("bias") is not None:
        text += f" (bias {t['bias']:.4f} + variance {t['variance']:.4f})"
    return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kdlab")
def main() -> None:
    """kdlab: ensemble image classifiers and distil the ensemble into one small student."""


@main.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", "preset_name", help="A bundled preset (see `kdlab presets`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.epochs=5 --set teachers.0.model=resnet18.")
@click.option("--out", type=click.Path(),
              help="Folder for config, events and results (default: a new folder in the run store).")
@click.option("--store", "store_dir", type=click.Path(file_okay=False),
              help=f"Run store folder (default ${ENV_VAR} or ./{DEFAULT_DIR}).")
@click.option("--no-store", is_flag=True, help="Do not record the run in the run store (needs --out).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(config_file: str | None, preset_name: str | None, overrides: tuple[str, ...], out: str | None,
        store_dir: str | None, no_store: bool, quiet: bool) -> None:
    """Train the teachers of a config (file or preset) and write results into --out."""
    from core.pipeline import prepare

    if no_store and not out:
        _fail(KdlabError("--out", "--no-store needs an output folder", "give --out DIR, or drop --no-store"))
    try:
        cfg = config_mod.load(config_file, preset_name, list(overrides))
        data_dir = Path(store_dir) if store_dir else default_data_dir()
        run_id = new_run_id(cfg.name)
        out_dir = Path(out) if out else data_dir / run_id
        prep = prepare(cfg, out_dir)
        store = None if no_store else RunStore(data_dir)
    except KdlabError as err:
        _fail(err)
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
    bars = ProgressBars(enabled=not quiet)
    cancel = CancelToken()
    events = EventBus(bars)
    recorder = heartbeat = None
    if store is not None:
        try:
            run_id = _record_start(store, cfg, out, run_id, resumed)
        except KdlabError as err:
            _fail(err)
        click.echo(f"run {run_id} in {store.data_dir}", err=True)
        recorder = StoreRecorder(store, run_id, out, expected_trainings(cfg))
        heartbeat = Heartbeat(store)
        heartbeat.add(run_id, "running", recorder.flush)
        events.subscribe(recorder)

    def finish(status: str, results=None, error: str | None = None) -> None:
        if store is None:
            return
        heartbeat.stop()
        recorder.close()
        try:
            store.finish_run(run_id, status, results=results, error=error)
        except KdlabError as err:
            click.echo(f"warning: the run store was not updated: {err}", err=True)

    try:
        results = run_experiment(prep, out, events, cancel)
    except KdlabError as err:
        finish("failed", error=str(err))
        _fail(err)
    except (Cancelled, KeyboardInterrupt):
        cancel.cancel()
        finish("cancelled")
        click.echo(f"cancelled: checkpoints are kept; {resume_hint}", err=True)
        sys.exit(130)
    except Exception as err:
        finish("failed", error=f"{type(err).__name__}: {err}")
        raise
    finish("done", results)
    click.echo(format_teacher_table(results["teachers"]))
    click.echo("")
    click.echo(format_table(results["comparison"]))
    summary = results["summary"]
    recovery = summary["gain_recovery"]
    click.echo(f"\nstudent/teacher params {summary['student_to_teacher_params']:.2f}x; distilled from "
               f"ensemble/{summary['target_scheme']} ({_teaching_text(results['teaching'])}); "
               f"gain recovery {_recovery_text(recovery)}")
    click.echo(_diagnostics_text(results.get("diagnostics", {})))
    for warning in results["warnings"][len(prep.warnings):]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"\nresults: {Path(out) / 'results.json'}  ({results['seconds']:.1f} s)")


def _record_start(store: RunStore, cfg, out: Path, run_id: str, resumed: bool) -> str:
    """Record the run as running: a new run, or (same folder run again) the earlier record of it."""
    if resumed:
        store.requeue(run_id)
        store.start_run(run_id)
        return run_id
    earlier = store.find_by_dir(out)
    if earlier is not None:
        if earlier.status in ("queued", "running"):
            raise KdlabError("--out", f"'{out}' is being written by run {earlier.id} ({earlier.status})",
                             "wait for it, or choose another --out folder")
        store.start_run(earlier.id)
        return earlier.id
    return store.create_run(cfg, source="cli", status="running", run_id=run_id, run_dir=out)


@main.command()
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", "preset_name", help="A bundled preset (see `kdlab presets`).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a base config value (teachers, data, train settings are fixed for the sweep).")
@click.option("--grid", "grid", multiple=True, required=True, metavar="FIELD=V1,V2,...",
              help="A swept field and its values, e.g. --grid distill.temperature=1,2,4 (repeatable: the "
                   "grid is every combination). Fields: distill.*, student.*, ensemble.scheme.")
@click.option("--seeds", type=click.IntRange(1, 20), default=None,
              help="Student seeds per point (default: student.seeds of the config).")
@click.option("--out", type=click.Path(),
              help="Folder for teachers, cache and sweep results (default: a new sweep-* folder in the run "
                   "store's folder, where the dashboard's Compare page lists it).")
@click.option("--store", "store_dir", type=click.Path(file_okay=False),
              help=f"Run store folder for the default --out (default ${ENV_VAR} or ./{DEFAULT_DIR}).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def sweep(config_file: str | None, preset_name: str | None, overrides: tuple[str, ...], grid: tuple[str, ...],
          seeds: int | None, out: str | None, store_dir: str | None, quiet: bool) -> None:
    """Student sweep: train the teachers once, then KD and scratch students for every grid point.

    Points are ranked by the distilled students' val accuracy; test accuracy, the paired KD - scratch
    gain and gain recovery are reported beside it (sweep.csv and sweep.json in --out).
    """
    from core.sweep import format_sweep, grid_points, parse_axis, run_sweep
    from core.train import CancelToken, EventBus

    try:
        cfg = config_mod.load(config_file, preset_name, list(overrides))
        axes = [parse_axis(g) for g in grid]
        points = len(grid_points(axes))
    except KdlabError as err:
        _fail(err)
    n_seeds = seeds or cfg.student.seeds
    if out is None:
        out = str((Path(store_dir) if store_dir else default_data_dir()) / f"sweep-{new_run_id(cfg.name)}")
    click.echo(f"kdlab sweep: {cfg.name}, {points} point(s) x {n_seeds} seed(s) into {out}; teachers trained "
               "once", err=True)
    cancel = CancelToken()
    events = EventBus(ProgressBars(enabled=not quiet))

    def on_row(row) -> None:  # a core.results.sweep.SweepRow
        val = "" if row.kd_val_acc is None else f" (val {row.kd_val_acc:.4f})"
        click.echo(f"done: {row.point}: KD {row.kd_test_acc_mean:.4f} vs scratch "
                   f"{row.scratch_test_acc_mean:.4f}{val}", err=True)

    def print_warning(event) -> None:
        if event.kind == "info" and event.message.startswith("warning: "):
            click.echo(event.message, err=True)

    events.subscribe(print_warning)
    try:
        result = run_sweep(cfg, axes, Path(out), seeds, events, cancel, on_row)
    except KdlabError as err:
        _fail(err)
    except (Cancelled, KeyboardInterrupt):
        cancel.cancel()
        click.echo(f"cancelled: checkpoints are kept; resume with the same command and --out {out}", err=True)
        sys.exit(130)
    click.echo(format_sweep(result))
    if result.best is not None:
        best = result.rows[result.best]
        sets = " ".join(f"--set {name}={best.value(name)}" for name in result.axes)
        click.echo(f"\n* best by KD val accuracy: {best.point} (test {best.kd_test_acc_mean:.4f} +- "
                   f"{best.kd_test_acc_std:.4f}); train it: kdlab run ... {sets}")
    click.echo(f"results: {Path(out) / 'sweep.csv'}")


@main.command()
@click.argument("run_id")
@click.option("--store", "store_dir", type=click.Path(file_okay=False),
              help=f"Run store folder (default ${ENV_VAR} or ./{DEFAULT_DIR}).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def resume(run_id: str, store_dir: str | None, quiet: bool) -> None:
    """Continue an interrupted, failed or cancelled run of the store from its checkpoints."""
    from core.pipeline import prepare

    try:
        store = RunStore(Path(store_dir) if store_dir else default_data_dir())
        record = store.get_run(run_id)
        if not record.resumable:
            raise KdlabError(f"run {run_id}", f"cannot be resumed: it is {record.status}",
                             "resume only interrupted, failed or cancelled runs")
        if record.started is not None and not record.dir_exists:
            record = store.get_run(run_id, require_dir=True)
        cfg = config_mod.validate(record.config)
        prep = prepare(cfg, record.run_dir)
    except KdlabError as err:
        _fail(err)
    _run_prepared(prep, record.run_dir, store, run_id, quiet, "run the same command again to resume",
                  resumed=True)


@main.command()
@click.option("--store", "store_dir", type=click.Path(file_okay=False),
              help=f"Run store folder (default ${ENV_VAR} or ./{DEFAULT_DIR}).")
@click.option("--status", "statuses", multiple=True, type=click.Choice(RUN_STATUSES),
              help="Only runs with this status (repeatable).")
@click.option("--limit", default=30, show_default=True, help="Show at most this many runs, newest first.")
def runs(store_dir: str | None, statuses: tuple[str, ...], limit: int) -> None:
    """List the runs in the run store (CLI and dashboard runs alike)."""
    try:
        store = RunStore(Path(store_dir) if store_dir else default_data_dir())
        df = store.list_runs(list(statuses) or None, limit=limit)
    except KdlabError as err:
        _fail(err)
    if df.empty:
        click.echo(f"no runs in {store.data_dir}", err=True)
        return
    click.echo(format_runs(df))


def format_runs(df) -> str:
    """A plain-text table of runs: id, name, status, created, KD student test accuracy."""
    width = max(24, int(df["id"].str.len().max()))
    header = f"{'id':<{width + 2}}{'name':<18}{'status':<13}{'progress':>9}  {'created':<17}{'kd test acc':>12}"
    lines = [header, "-" * len(header)]
    for r in df.itertuples():
        acc = "" if r.kd_test_acc != r.kd_test_acc or r.kd_test_acc is None else f"{r.kd_test_acc:.4f}"
        lines.append(f"{r.id:<{width + 2}}{str(r.name)[:17]:<18}{r.status:<13}{r.progress * 100:>8.0f}%  "
                     f"{r.created:%Y-%m-%d %H:%M}  {acc:>11}")
    return "\n".join(lines)


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
    for row in rows:
        click.echo(f"{row['name']:<48}{row['params'] / 1e6:>10.2f}M")


@main.command()
def presets() -> None:
    """List the bundled presets."""
    for name in config_mod.list_presets():
        cfg = config_mod.preset(name)
        teachers = ", ".join(t["model"] for t in cfg.get("teachers", []))
        click.echo(f"{name:<16}{cfg.get('data', {}).get('name', '?'):<12}{teachers}")


@main.command()
def datasets() -> None:
    """List the data sets kdlab can load."""
    from core.data import list_datasets

    for name in list_datasets():
        click.echo(name)


@main.command("show-config")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
@click.option("--preset", "preset_name")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def show_config(config_file: str | None, preset_name: str | None, overrides: tuple[str, ...]) -> None:
    """Print the full, validated config (every default filled in) as YAML."""
    try:
        cfg = config_mod.load(config_file, preset_name, list(overrides))
    except KdlabError as err:
        _fail(err)
    click.echo(cfg.to_yaml(), nl=False)


if __name__ == "__main__":
    main()
