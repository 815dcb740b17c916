"""`kdlab export RUN --out DIR`: the click command (registered in core.cli with `main.add_command`).

It handles its own errors, so it behaves the same inside kdlab's group or alone: bad input prints
`error: <field>: <problem>; <fix>` on stderr and exits 2; Ctrl-C exits 130 with nothing left under --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from core.errors import Cancelled, KdlabError
from core.export.layout import FORMATS, INT8_MAX_DROP
from core.lifecycle import one_line

EXIT_ERROR = 2
EXIT_CANCELLED = 130


def _progress(quiet: bool):
    def show(event) -> None:  # a core.train.Event
        if not quiet and event.kind == "stage":
            click.echo(f"export {event.metrics.get('step', 0):.0f}/{event.metrics.get('steps', 0):.0f}: "
                       f"{event.message}", err=True)
    return show


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MB"


def format_result(result) -> str:
    """The export's report: files per format, verification figures, speed per runtime, card paths."""
    card = result.card
    lines = [f"exported {card['model']['name']} ({card['model']['architecture']}; {card['selection']['rule']}) "
             f"to {result.out}"]
    for name, facts in card["formats"].items():
        lines.append(f"  {name:<12} {', '.join(facts['files']):<36} {_mb(facts['bytes'])}")
    n = card["data"]["splits"]["test"]["images"]
    lines.append(f"verification on the test split ({n} images):")
    lines += [f"  {c.text()}" for c in result.checks]
    if card["runtimes"]:
        r0 = card["runtimes"][0]
        lines.append(f"speed ({r0['threads']} threads, {r0['device']}): batch-1 latency, throughput at batch "
                     f"{r0['batch']}, test accuracy")
        eager = r0["latency_ms"]
        for r in card["runtimes"]:
            lines.append(f"  {r['runtime'] + ' ' + r['precision']:<22} {r['latency_ms']:8.3f} ms "
                         f"({r['latency_ms'] / eager:5.2f}x eager) {r['throughput']:10.0f} img/s  "
                         f"acc {r['test_acc']:.4f}")
    lines.append(f"card: {result.out / 'README.md'} (and card.json)")
    return "\n".join(lines)


@click.pass_context
def _export(ctx: click.Context, run: str, model_name: str | None, formats: str, quantize: str | None, out: str,
            store_dir: str | None, overwrite: bool, threads: int | None, int8_max_drop: float,
            timing_seconds: float, quiet: bool) -> None:
    """Export a run's student (default: the val-best distilled seed) in verified formats with a model card.

    RUN is a run id of the store, a run folder or a sweep folder. Every file is reloaded and checked
    against the PyTorch model on the run's test split before the folder appears under --out.
    """
    command = " ".join(["kdlab", *[a if " " not in a else repr(a) for a in sys.argv[1:]]]) \
        if sys.argv and Path(sys.argv[0]).name == "kdlab" else None
    try:
        from core.export.export import export_model  # torch, timm, onnx: only when an export runs

        result = export_model(run, out, model=model_name, formats=formats, quantize=quantize,
                              store_dir=store_dir, overwrite=overwrite, threads=threads,
                              int8_max_drop=int8_max_drop, timing_seconds=timing_seconds,
                              events=_progress(quiet), command=command)
    except KdlabError as err:
        click.echo(f"error: {one_line(err)}", err=True)
        ctx.exit(EXIT_ERROR)
    except (Cancelled, KeyboardInterrupt):
        click.echo("export cancelled; nothing was written under --out", err=True)
        ctx.exit(EXIT_CANCELLED)
    click.echo(format_result(result))
    if result.skipped:
        # the other formats are written and verified; the one that could not be is bad input for this model
        reasons = "; ".join(f"{name}: {why}" for name, why in result.skipped.items())
        click.echo(f"error: --format: {reasons}; drop it from --format (the other formats are in {result.out})",
                   err=True)
        ctx.exit(EXIT_ERROR)


_options = [
    click.argument("run"),
    click.option("--model", "model_name", default=None, metavar="NAME",
                 help="student/kd/s1, student/scratch/s0, teacher/<name>/s0, trial/3 (a sweep's point); "
                      "default: the distilled student with the best val accuracy."),
    click.option("--format", "formats", default=",".join(FORMATS), show_default=True, metavar="FORMATS",
                 help="Comma list of safetensors, timm, onnx, pt2."),
    click.option("--quantize", default=None, metavar="int8", help="Add a post-training int8 model (onnxruntime)."),
    click.option("--out", required=True, type=click.Path(), help="Export folder (new, empty, or an earlier "
                                                                   "export with --overwrite)."),
    click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
                 help="Run store folder for a run id (default $KDLAB_RUNS or ./kdlab-runs)."),
    click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out."),
    click.option("--threads", type=int, default=None, help="CPU threads for timing (default: torch's)."),
    click.option("--int8-max-drop", type=float, default=INT8_MAX_DROP, show_default=True,
                 help="Largest test-accuracy drop int8 may show against fp32 (a share: 0.01 = 1 point)."),
    click.option("--timing-seconds", type=float, default=2.0, show_default=True,
                 help="Seconds spent timing the batch-1 calls (half that at batch 256)."),
    click.option("--quiet", is_flag=True, help="No progress lines."),
]

_decorated = _export
for _option in reversed(_options):
    _decorated = _option(_decorated)

export_command = click.command("export")(_decorated)
