"""When distillation pays: gain recovery against the share of the train split, one line per student width.

Drawn from the figures `benchmarks/when_kd_pays.py` saves (assets/when_kd_pays.json): per cell (share x
width) the ensemble gap, the KD - scratch gain and the gain recovery, each mean +- std over teacher seeds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import plotly.graph_objects as go

from dashboard.figures.base import PALETTE, empty_figure, num, set_title

log = logging.getLogger(__name__)

SAVED = Path(__file__).resolve().parents[2] / "assets" / "when_kd_pays.json"
NEEDED = ("share", "width", "train_images", "test_images", "gap", "gain", "recovery", "per_teacher_seed")


def read_kd_pays(path: Path | None = None) -> dict[str, Any] | None:
    """The saved benchmark figures (default: SAVED), or None when the file is missing or unreadable (logged)."""
    path = Path(SAVED if path is None else path)  # SAVED read per call: tests point it at a file of their own
    if not path.is_file():
        log.info("no saved figures at %s (run benchmarks/when_kd_pays.py)", path)
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("the saved figures %s are unreadable (%s: %s)", path, type(err).__name__, err)
        return None
    if not isinstance(report, dict) or not isinstance(report.get("cells"), list):
        log.warning("the saved figures %s have no 'cells' list", path)
        return None
    return report


def _images(stat: Mapping[str, Any], n: int, sign: str = "") -> str:
    """A mean +- std accuracy difference in test images: '+2.7 +- 0.4 images'."""
    if stat.get("mean") is None:
        return "undefined"
    return f"{stat['mean'] * n:{sign}.1f} ± {stat['std'] * n:.1f} images"


def kd_pays_curve(report: Mapping[str, Any]) -> go.Figure:
    """Gain recovery (mean over teacher seeds, std as error bars) against the share of the train split,
    one line per student width, with the project's 0.5 goal dashed.

    report: the JSON benchmarks/when_kd_pays.py saves (its 'cells', 'width_params', 'target').
    """
    if not isinstance(report, Mapping) or not isinstance(report.get("cells"), list):
        raise ValueError("kd_pays_curve needs the saved figures of benchmarks/when_kd_pays.py (a dict with 'cells')")
    cells = report["cells"]
    if not cells:
        return empty_figure("no cells measured yet", title="When does distillation pay?")
    missing = [k for k in NEEDED if k not in cells[0]]
    if missing:
        raise ValueError(f"when_kd_pays cells need {', '.join(missing)}")
    params = report.get("width_params", {})
    widths = sorted({float(c["width"]) for c in cells})
    fig = go.Figure()
    for i, width in enumerate(widths):
        line = sorted((c for c in cells if float(c["width"]) == width), key=lambda c: float(c["share"]))
        hover = [f"{c['share']:.0%} of train ({c['train_images']} images)<br>"
                 f"ensemble gap {_images(c['gap'], c['test_images'])}<br>"
                 f"KD − scratch {_images(c['gain'], c['test_images'], '+')}<br>"
                 f"per teacher seed: " + ", ".join("–" if s.get("recovery") is None else f"{s['recovery']:.2f}"
                                                   for s in c["per_teacher_seed"])
                 + ("" if c.get("resolved", True) else "<br>no answer: the ensemble's lead is too small, or not there "
                    "at every teacher seed")
                 for c in line]
        # Open markers: cells without an answer, where the ensemble leads by under min_gap_images test images
        # (a ratio of noise) or not at every teacher seed (the mean is over the others).
        symbols = ["circle" if c.get("resolved", True) else "circle-open" for c in line]
        count = params.get(str(width)) or params.get(f"{width:g}")
        name = f"width {width:g}" + (f" ({count / 1e3:.0f}k params)" if count else "")
        fig.add_trace(go.Scatter(
            x=[float(c["share"]) for c in line], y=[num(c["recovery"]["mean"]) for c in line], name=name,
            mode="lines+markers", marker=dict(size=9, color=PALETTE[i % len(PALETTE)], symbol=symbols),
            line=dict(color=PALETTE[i % len(PALETTE)]),
            error_y=dict(type="data", array=[num(c["recovery"]["std"]) for c in line], visible=True),
            hovertext=hover, hoverinfo="text+y"))
    target = float(report.get("target", 0.5))
    fig.add_hline(y=target, line=dict(color="#555555", dash="dash"), annotation_text=f"goal {target:g}",
                  annotation_position="top left")
    seeds = len(report.get("teacher_seeds", [])) or len(cells[0]["per_teacher_seed"])
    note = (f"mean over {seeds} teacher seed(s), error bars: std over teacher seeds; "
            f"{report.get('student_seeds', '?')} student seed(s) each")
    if any(not c.get("resolved", True) for c in cells):
        note += (f"; open markers: no answer (the ensemble leads by under {report.get('min_gap_images', 2):g} test "
                 "images, or not at every teacher seed)")
    set_title(fig, f"Gain recovery against the share of the train split ({report.get('data', 'data')})",
              chars=90, note=note)
    fig.update_layout(height=420, xaxis_title="share of the train split", yaxis_title="gain recovery",
                      legend=dict(orientation="h", y=-0.25))
    fig.update_xaxes(tickformat=".0%", tickvals=sorted({float(c["share"]) for c in cells}))
    return fig


def kd_pays_caption(report: Mapping[str, Any]) -> str:
    """Where the figure comes from: the command and the date of the run that saved it."""
    return (f"From `{report.get('command', 'python benchmarks/when_kd_pays.py')}` "
            f"({report.get('date', 'date unknown')}); per teacher seed, gain recovery = (KD − scratch) / "
            "(ensemble − scratch) of the mean test accuracies over the student seeds; BENCHMARKS.md has the table.")
