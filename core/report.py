"""The comparison table: one row per method (teacher, ensemble scheme, scratch student, KD student)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from core.bench import Cost
from core.evaluate import mean_std
from core.results import BudgetReport, ComparisonRow, EnsembleEntry, TestScores

# The comparison table's columns, in order (the fields of core.results.ComparisonRow).
COLUMNS = tuple(ComparisonRow.model_fields)


def row(method: str, kind: str, entries: Sequence[TestScores | EnsembleEntry], cost: Cost,
        train_seconds: float) -> ComparisonRow:
    """A comparison row from per-seed entries (each with test_acc, test_nll, test_ece) and a measured cost."""
    acc = mean_std([e.test_acc for e in entries])
    nll = mean_std([e.test_nll for e in entries])
    ece = mean_std([e.test_ece for e in entries])
    return ComparisonRow(method=method, kind=kind, test_acc_mean=acc["mean"], test_acc_std=acc["std"],
                         test_nll_mean=nll["mean"], test_nll_std=nll["std"], test_ece=ece["mean"],
                         seeds=len(entries), params=cost.params, flops=cost.flops, latency_ms=cost.latency_ms,
                         throughput=cost.throughput, peak_memory_mb=cost.peak_memory_mb,
                         train_seconds=train_seconds)


def format_table(rows: Sequence[ComparisonRow | Mapping[str, Any]]) -> str:
    """Plain-text comparison table for the terminal (rows as models or dicts)."""
    from core.tables import Column, fixed, mega, millions, plus_minus, text_table

    return text_table(rows, [
        Column("method", "method", left=True),
        Column("test acc", plus_minus("test_acc_mean", "test_acc_std")),
        Column("test nll", plus_minus("test_nll_mean", "test_nll_std")),
        Column("ECE", "test_ece", fixed(3)),
        Column("params", "params", millions),
        Column("MFLOPs", "flops", mega),
        Column("lat ms", "latency_ms", fixed(2)),
        Column("img/s", "throughput", fixed(0)),
        Column("train s", "train_seconds", fixed(1)),
    ])

def format_budget_table(report: BudgetReport) -> str:
    """Plain-text teacher cost per round (distill.teacher_budget): passes per student against accuracy."""
    from core.tables import Column, fixed, text_table

    def seeds(r: Mapping[str, Any]) -> int:  # the run's counts are summed over its seeds
        return max(r["seeds"], 1)

    counted = "teacher outputs used as targets" if report.counts == "targets" else "teacher forwards run"
    head = (f"teacher budget {report.share:g}: {report.per_round} of {report.train_examples} train examples per "
            f"round; passes = {counted}, per student")
    return head + "\n" + text_table(report.rounds, [
        Column("round", "round"),
        Column("examples", "examples"),
        Column("passes", lambda r: r["passes"] / seeds(r), fixed(0)),
        Column("cumulative", lambda r: r["passes_cumulative"] / seeds(r), fixed(0)),
        Column("val acc", "val_acc", fixed(4)),
        Column("test acc", "test_acc", fixed(4)),
        Column("recovery", "gain_recovery", fixed(2)),
    ])
