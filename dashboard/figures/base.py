"""Shared pieces of the figure builders: colours, the empty-state figure, small conversions."""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go

# One colour per kind of model, the same on every page.
KIND_COLOURS = {
    "teacher": "#1f77b4",
    "ensemble": "#9467bd",
    "student": "#2ca02c",
    "student kd": "#2ca02c",
    "student scratch": "#7f7f7f",
    "other": "#8c564b",
}
# Colours for a list of named series (teachers in a gallery, members in a histogram).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def empty_figure(message: str, title: str | None = None, height: int = 260) -> go.Figure:
    """A figure with no data and `message` in the middle: what a page shows before there is data.

    `fig.layout.meta["empty"]` is True, so callers and tests can tell it from a real figure.
    """
    fig = go.Figure()
    fig.add_annotation(text=wrap(message, 90), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title=title, height=height, meta={"empty": True, "message": message},
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    return fig


def is_empty(fig: go.Figure) -> bool:
    """True for a figure made by `empty_figure`."""
    meta = fig.layout.meta
    return isinstance(meta, Mapping) and bool(meta.get("empty"))


# Characters of a chart title that fit on one line (plotly titles never wrap: a long one is cut off at the
# chart's edge). Measured on the 1400 px wide page of the screenshots: a half-page chart is about 460 px
# wide and the title font about 7 px per character.
HALF_WIDTH_CHARS = 58
FULL_WIDTH_CHARS = 120
TITLE_LINE_PX = 22


def set_title(fig: go.Figure, text: str, chars: int = HALF_WIDTH_CHARS, top_px: int = 18,
              note: str | None = None) -> go.Figure:
    """Title `fig` with `text` broken into lines of at most `chars` characters, an optional `note` in
    small type under it, and room above the plot for every line (`top_px` more for subplot titles)."""
    lines = textwrap.wrap(str(text), chars) or [str(text)]
    if note:
        lines += [f"<span style='font-size:11px;font-weight:normal'>{line}</span>"
                  for line in textwrap.wrap(note, int(chars * 1.4))]
    # Pinned to the top of the figure (not centred in the margin), so lines added below it push the plot
    # and its subplot titles down instead of running into them.
    fig.update_layout(title=dict(text="<br>".join(lines), y=1, yref="container", yanchor="top", pad=dict(t=10)),
                      margin=dict(t=10 + top_px + TITLE_LINE_PX * len(lines)))
    return fig


def wrap(text: str, width: int = 100) -> str:
    """`text` broken into lines of at most `width` characters with <br> (plotly annotations do not wrap)."""
    return "<br>".join(textwrap.wrap(str(text), width)) or str(text)


def num(value: Any) -> float:
    """A float, with None (JSON's stand-in for a missing number) as NaN."""
    return math.nan if value is None else float(value)


def nums(values: Any) -> np.ndarray:
    """A float array with None entries as NaN."""
    return np.array([num(v) for v in values], dtype=float)


def diag_problem(diag: Any) -> str | None:
    """Why a diagnose() dict cannot be drawn (it recorded an error), or None; a non-dict is a ValueError."""
    if not isinstance(diag, Mapping):
        raise ValueError(f"expected the diagnostics dict of results.json (diagnose() output), got "
                         f"{type(diag).__name__}")
    if diag.get("error"):  # results.json v2 writes "error": null when the diagnostics went fine
        return f"the diagnostics failed in this run: {diag['error']}"
    return None


def image_trace(image: np.ndarray) -> go.Heatmap | go.Image:
    """One (C, H, W) uint8 image as a trace: a grey heatmap for one channel, an RGB image for three."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape (1 or 3, H, W), got {image.shape}")
    if image.shape[0] == 1:
        # rows reversed: a heatmap draws row 0 at the bottom, an image at the top
        scale = dict(zmin=0, zmax=255) if image.dtype == np.uint8 else {}  # black is 0, not the darkest pixel
        return go.Heatmap(z=image[0][::-1], colorscale="gray", showscale=False, hoverinfo="skip", **scale)
    return go.Image(z=np.transpose(image, (1, 2, 0)), hoverinfo="skip")
