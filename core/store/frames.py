"""Helpers for long metric series: keep plots fast without hiding spikes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

MAX_POINTS = 2000  # per series: more points than a plot is pixels wide only slows the browser


def downsample_indices(values: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Positions to keep of a series (in x order): the first, the last, and the min and max of each bucket.

    Keeping both extremes of every bucket (rather than every k-th point) keeps a loss spike visible.
    """
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    if max_points < 4:
        return np.linspace(0, n - 1, max(max_points, 1)).round().astype(int)
    buckets = (max_points - 2) // 2
    inner = np.arange(1, n - 1)
    bucket = (inner - 1) * buckets // (n - 2)
    v = np.asarray(values, dtype=float)[inner]
    low = np.where(np.isnan(v), np.inf, v)
    high = np.where(np.isnan(v), -np.inf, v)
    # lexsort orders by bucket, then value: the first position of each bucket is its min (or max).
    by_low = np.lexsort((low, bucket))
    by_high = np.lexsort((-high, bucket))
    first = np.r_[True, bucket[by_low][1:] != bucket[by_low][:-1]]
    keep = np.concatenate(([0], inner[by_low[first]], inner[by_high[first]], [n - 1]))
    return np.unique(keep)


def downsample(df: pd.DataFrame, x: str, y: str, by: list[str] | str | None = None,
               max_points: int = MAX_POINTS) -> pd.DataFrame:
    """At most `max_points` rows per series (rows grouped by `by`, ordered by `x`), extremes kept."""
    import pandas as pd

    if df.empty:
        return df
    if by is None:
        groups = [(None, df)]
    else:
        groups = df.groupby(by, sort=False, dropna=False)
    parts = []
    for _, g in groups:
        g = g.sort_values(x, kind="stable")
        if len(g) > max_points:
            g = g.iloc[downsample_indices(g[y].to_numpy(dtype=float), max_points)]
        parts.append(g)
    return pd.concat(parts)
