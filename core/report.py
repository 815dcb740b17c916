"""The comparison table: one row per method (teacher, ensemble scheme, scratch student, KD student)."""

from __future__ import annotations

from typing import Any, Sequence

from core.bench import Cost
from core.evaluate import mean_std
from core.results import ComparisonRow, EnsembleEntry, TestScores

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


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text comparison table for the terminal."""
    header = (f"{'method':<30}{'test acc':>17}{'test nll':>17}{'ECE':>7}{'params':>9}{'MFLOPs':>8}"
              f"{'lat ms':>8}{'img/s':>9}{'train s':>9}")
    lines = [header, "-" * len(header)]
    for r in rows:
        acc = f"{r['test_acc_mean']:.4f}+-{r['test_acc_std']:.4f}"
        nll = f"{r['test_nll_mean']:.4f}+-{r['test_nll_std']:.4f}"
        lines.append(f"{r['method']:<30}{acc:>17}{nll:>17}{r['test_ece']:>7.3f}{r['params'] / 1e6:>8.2f}M"
                     f"{r['flops'] / 1e6:>8.1f}{r['latency_ms']:>8.2f}{r['throughput']:>9.0f}"
                     f"{r['train_seconds']:>9.1f}")
    return "\n".join(lines)
