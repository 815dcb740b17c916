"""Text tables: columns as wide as their values (large values never run together), rows as dicts or models."""

from __future__ import annotations

import math
import re

import pytest

from core.cli import format_teacher_table
from core.report import format_table
from core.results import ComparisonRow
from core.results.sweep import SweepRow
from core.sweep import SweepResult, format_sweep
from core.tables import Column, fixed, mega, millions, percent, plus_minus, text_table

ROW = dict(method="resnet10t", kind="teacher", test_acc_mean=0.98334, test_acc_std=0.0, test_nll_mean=0.0598,
           test_nll_std=0.0, test_ece=0.015, seeds=1, params=1_230_000, flops=4_200_000, latency_ms=5.11,
           throughput=19121.4, peak_memory_mb=10.0, train_seconds=6.8)
# A diverged student: the values that once printed as `0.105818619837.4627`.
HUGE = {**ROW, "method": "student/kd", "kind": "student", "test_nll_mean": 0.1058186, "test_nll_std": 19837.4627,
        "test_acc_std": 0.31, "params": 123_456_789_000, "flops": 98_765_432_100_000, "latency_ms": 123456.7,
        "throughput": 0.5, "train_seconds": 9_876_543.2}


def _columns(table: str) -> list[list[str]]:
    """The cells of every line, split where two or more spaces stand."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines() if not set(line) <= {"-"}]


def test_number_formats_for_people():
    assert millions(1_234_567) == "1.23M" and mega(4_200_000) == "4.2" and percent(0.5) == "50%"
    assert fixed(4)(0.98) == "0.9800" and fixed(4, sign=True)(0.008) == "+0.0080"
    assert plus_minus("m", "s")({"m": 0.9833, "s": 0.0012}) == "0.9833+-0.0012"
    assert plus_minus("m", "s")({"m": 0.9833, "s": None}) == "0.9833"
    for missing in (None, math.nan):
        assert fixed(4)(missing) == millions(missing) == plus_minus("m", "s")({"m": missing, "s": 1}) == ""


def test_large_values_never_run_together():
    table = format_table([ROW, HUGE])
    header, rule, *lines = table.splitlines()
    assert set(rule) == {"-"} and len(rule) == max(len(line) for line in table.splitlines())
    titles = ["method", "test acc", "test nll", "ECE", "params", "MFLOPs", "lat ms", "img/s", "train s"]
    cells = _columns(table)
    assert cells[0] == titles
    assert cells[2] == ["student/kd", "0.9833+-0.3100", "0.1058+-19837.4627", "0.015", "123456.79M",
                        "98765432.1", "123456.70", "0", "9876543.2"]
    assert cells[1] == ["resnet10t", "0.9833+-0.0000", "0.0598+-0.0000", "0.015", "1.23M", "4.2", "5.11",
                        "19121", "6.8"]
    # Right-aligned numbers end under the end of their title.
    for title in titles[1:]:
        end = header.index(title) + len(title)
        assert all(line[end - 1] != " " and (end == len(line) or line[end] == " ") for line in lines), title


def test_rows_may_be_dicts_or_models():
    assert format_table([ComparisonRow(**ROW)]) == format_table([ROW])
    teacher = {"name": "a_very_long_teacher_name_that_is_wider_than_before", "seed": 0, "params": 100_000,
               "flops": 1_100_000, "test_acc": 0.98051, "test_nll": 0.0953, "train_seconds": 5.3}
    cells = _columns(format_teacher_table([teacher]))
    assert cells == [["teacher", "seed", "params", "MFLOPs", "test acc", "test nll", "train s"],
                     [teacher["name"], "0", "0.10M", "1.1", "0.9805", "0.0953", "5.3"]]


def _sweep_row(point: str, temperature: float, val: float | None) -> dict:
    return dict(point=point, kd_val_acc=val, kd_val_nll=0.1, kd_test_acc_mean=0.98, kd_test_acc_std=0.004,
                kd_test_nll_mean=0.07, scratch_test_acc_mean=0.97, scratch_test_acc_std=0.005,
                paired_gain_mean=0.008, paired_gain_std=0.002, ensemble_test_acc=0.99, gain_recovery=0.4,
                gain_recovery_per_seed_mean=0.4, gain_recovery_per_seed_std=0.1, seeds=2, kd_train_seconds=3.0,
                **{"distill.temperature": temperature})


@pytest.mark.parametrize("typed", [False, True])
def test_sweep_table_marks_the_val_best_row(typed):
    rows = [_sweep_row("distill.temperature=1", 1, 0.95), _sweep_row("distill.temperature=4", 4, None)]
    rows = [SweepRow(**r) for r in rows] if typed else rows
    result = SweepResult(axes=["distill.temperature"], rows=rows, best=0, teachers=[], target_accs={}, warnings=[])
    header, _, best, other = format_sweep(result).splitlines()
    assert header.split("  ")[0] == "" and "paired gain" in header
    assert best.startswith("*  distill.temperature=1") and other.startswith("   distill.temperature=4")
    assert "+0.0080+-0.0020" in best and "0.9500" in best and "0.9500" not in other


def test_left_and_right_columns_and_no_header():
    rows = [{"name": "a", "n": 1}, {"name": "bbbb", "n": 22}]
    columns = [Column("name", "name", left=True), Column("n", "n", fixed(0))]
    assert text_table(rows, columns, header=False).splitlines() == ["a      1", "bbbb  22"]
    assert text_table(rows, columns).splitlines()[:2] == ["name   n", "--------"]
