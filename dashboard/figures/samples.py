"""Setup page figures: sample images of a data set and the models' cost."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboard.figures.base import image_trace


def sample_grid(images: np.ndarray, labels: list[str], columns: int = 8) -> go.Figure:
    """A grid of sample images (N, C, H, W uint8) titled by their labels."""
    n = len(images)
    if n == 0:
        raise ValueError("sample_grid needs at least one image")
    rows = (n + columns - 1) // columns
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=labels,
                        horizontal_spacing=0.01, vertical_spacing=0.06)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        fig.add_trace(image_trace(image), row=r + 1, col=c + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    fig.update_layout(height=110 * rows + 40, margin=dict(l=0, r=0, t=30, b=0),
                      paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")
    fig.update_annotations(font_size=11)
    return fig


def model_cost_bars(names: list[str], params: list[int], flops: list[int]) -> go.Figure:
    """Side-by-side bars of parameters (millions) and forward MFLOPs per image for each model."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("parameters (M)", "MFLOPs / image"))
    fig.add_trace(go.Bar(x=names, y=[p / 1e6 for p in params], name="params"), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[f / 1e6 for f in flops], name="MFLOPs"), row=1, col=2)
    fig.update_layout(showlegend=False, height=280, margin=dict(l=0, r=0, t=30, b=0))
    return fig
