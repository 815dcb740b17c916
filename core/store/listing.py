"""The store's contents as plain-text tables for the terminal (`kdlab runs`, `kdlab runs reindex`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from core.tables import Column, fixed, minutes, percent, text_table

if TYPE_CHECKING:  # pandas is imported by the store where a frame is built: `kdlab presets` need not pay for it
    import pandas as pd

    from core.store.reindex import ReindexReport


def format_runs(df: pd.DataFrame) -> str:
    """A plain-text table of runs: id, name, status, progress, created, KD student test accuracy."""
    return text_table(df.to_dict("records"), [
        Column("id", "id", left=True),
        Column("name", "name", left=True),
        Column("status", "status", left=True),
        Column("progress", "progress", percent),
        Column("created", "created", minutes, left=True),
        Column("kd test acc", "kd_test_acc", fixed(4)),
    ])


def format_reindex(report: ReindexReport) -> str:
    """A plain-text table of what reindexing did with each run folder, then its one-line summary."""
    table = text_table([asdict(r) for r in report.rows], [
        Column("run", "folder", left=True),
        Column("action", "action", left=True),
        Column("status", "status", left=True),
        Column("events", "events"),
        Column("reason / note", "reason", left=True),
    ]) if report.rows else ""
    return "\n".join(part for part in (table, report.summary()) if part)
