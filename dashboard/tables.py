"""How dashboard tables show numbers: one unit and format per kind of quantity, columns still sortable.

Cells stay numbers, so clicking a column header sorts by value, not by text. A column shown in a unit
other than the stored one (parameters in millions, FLOPs in millions, throughput in thousands of
images per second) is scaled on a copy, and its NumberColumn format prints the unit: `1.23M`,
`4.2 MFLOPs`, `3.51 ms`, `12.3k img/s`. A mean and its spread over seeds are two neighbouring
columns, `0.9833` and `± 0.0012`, so the mean still sorts. CSV downloads use the unscaled frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import pandas as pd
import streamlit as st


@dataclass(frozen=True)
class Quantity:
    """How one column is shown: its title, printf format (with the unit), scale and a tooltip."""

    label: str
    fmt: str
    scale: float = 1.0  # stored value / scale is shown
    help: str | None = None


ACC, STD = "%.4f", "± %.4f"
SEEDS = "over seeds"

# Column name (as results.json, the store and sweep.json name it) -> how every table shows it.
QUANTITIES: dict[str, Quantity] = {
    # costs (core.bench, per image)
    "params": Quantity("params", "%.2fM", 1e6, "parameters, in millions"),
    "flops": Quantity("FLOPs", "%.1f MFLOPs", 1e6, "floating-point operations per image (2 per multiply-add)"),
    "latency_ms": Quantity("latency", "%.2f ms", help="median batch-1 forward time per image"),
    "throughput": Quantity("throughput", "%.1fk img/s", 1e3, "images per second at the benchmark batch"),
    "peak_memory_mb": Quantity("peak memory", "%.1f MB"),
    "train_seconds": Quantity("train time", "%.1f s", help="a distilled student's includes its teachers'"),
    # scores of the comparison table (mean and std over seeds)
    "test_acc_mean": Quantity("test acc", ACC, help=f"test accuracy, mean {SEEDS}"),
    "test_acc_std": Quantity("± std", STD, help=f"standard deviation of the test accuracy {SEEDS}"),
    "test_nll_mean": Quantity("test NLL", ACC, help=f"test negative log-likelihood (nats per image), mean {SEEDS}"),
    "test_nll_std": Quantity("± std", STD, help=f"standard deviation of the test NLL {SEEDS}"),
    "test_ece": Quantity("ECE", "%.3f", help="expected calibration error on test"),
    "seeds": Quantity("seeds", "%d"),
    # headline numbers of a run (core.results.HEADLINE_KEYS)
    "kd_test_acc": Quantity("KD test acc", ACC, help=f"distilled student's test accuracy, mean {SEEDS}"),
    "scratch_test_acc": Quantity("scratch test acc", ACC, help=f"scratch student's test accuracy, mean {SEEDS}"),
    "ensemble_test_acc": Quantity("ensemble test acc", ACC, help="test accuracy of the ensemble the student learns from"),
    "best_teacher_test_acc": Quantity("best teacher test acc", ACC),
    "gain_recovery": Quantity("gain recovery", "%.2f",
                              help="(KD - scratch) / (ensemble - scratch): the share of the ensemble's gain kept"),
    # sweep points (core.results.sweep.SweepRow)
    "kd_val_acc": Quantity("KD val acc", ACC, help="what the sweep ranks points by (test is only reported)"),
    "kd_test_acc_mean": Quantity("KD test acc", ACC, help=f"mean {SEEDS}"),
    "kd_test_acc_std": Quantity("± std", STD, help=f"standard deviation {SEEDS}"),
    "scratch_test_acc_mean": Quantity("scratch test acc", ACC, help=f"mean {SEEDS}"),
    "scratch_test_acc_std": Quantity("± std", STD, help=f"standard deviation {SEEDS}"),
    "paired_gain_mean": Quantity("KD - scratch", "%+.4f", help=f"test accuracy gain paired by seed, mean {SEEDS}"),
    "paired_gain_std": Quantity("± std", STD, help=f"standard deviation of the paired gain {SEEDS}"),
    # the run listing
    "eta": Quantity("ETA", "%.0f s", help="estimated seconds left"),
}


def formatted(frame: pd.DataFrame, overrides: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The frame to show (known columns scaled to their shown unit, on a copy) and its column_config."""
    shown = frame.copy()
    config: dict[str, Any] = {}
    for column in frame.columns:
        quantity = QUANTITIES.get(str(column))
        if quantity is None or not pd.api.types.is_numeric_dtype(frame[column]):
            continue  # text, or numbers stored as text: shown as they are
        if quantity.scale != 1.0:
            shown[column] = frame[column] / quantity.scale
        config[column] = st.column_config.NumberColumn(quantity.label, format=quantity.fmt, help=quantity.help)
    config.update(overrides or {})
    return shown, config


def show_table(frame: pd.DataFrame, *, key: str, column_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """st.dataframe of `frame` with every known quantity in its unit and format, no index, full width."""
    shown, config = formatted(frame, column_config)
    st.dataframe(shown, hide_index=True, width="stretch", key=key, column_config=config, **kwargs)
