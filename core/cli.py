"""`kdlab` command line: the engine without the dashboard, for reproducible runs and sweeps."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from core import config as config_mod
from core.errors import Cancelled, KdlabError
from core.report import format_table


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
@click.option("--out", required=True, type=click.Path(), help="Folder for config, events and results.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run(config_file: str | None, preset_name: str | None, overrides: tuple[str, ...], out: str,
        quiet: bool) -> None:
    """Train the teachers of a config (file or preset) and write results into --out."""
    from core.pipeline import prepare, run_experiment
    from core.train import CancelToken, EventBus

    try:
        cfg = config_mod.load(config_file, preset_name, list(overrides))
        prep = prepare(cfg, Path(out))
    except KdlabError as err:
        _fail(err)
    click.echo(f"kdlab: {cfg.name} on {prep.data.name} ({len(prep.data.train)}/{len(prep.data.val)}/"
               f"{len(prep.data.test)} train/val/test images, {prep.data.num_classes} classes), "
               f"device {prep.device}, {prep.trainings} teacher training(s)", err=True)
    click.echo(prep.decomposition_plan, err=True)
    for warning in prep.warnings:
        click.echo(f"warning: {warning}", err=True)
    bars = ProgressBars(enabled=not quiet)
    cancel = CancelToken()
    try:
        results = run_experiment(prep, Path(out), EventBus(bars), cancel)
    except KdlabError as err:
        _fail(err)
    except (Cancelled, KeyboardInterrupt):
        cancel.cancel()
        click.echo("cancelled: checkpoints are kept; run the same command again to resume", err=True)
        sys.exit(130)
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
