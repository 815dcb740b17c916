"""Rebuilding store rows from run folders, so the runs a lost or damaged `kdlab.db` knew come back.

A run folder (core/pipeline.py) holds config.yaml, events.jsonl and, once a stage has finished,
results.json with `status` and `stages_done`. Those files are enough for a store row: the folder's
name is the run id, config.yaml gives the name and config, results.json the results and status, and
events.jsonl the events and times. No process owns a reindexed run, so a run its results still call
`running` comes back `interrupted`, which can be resumed from its checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import config as config_mod
from core.errors import KdlabError
from core.lifecycle import RunStatus, one_line
from core.results import ResultsError, headline, read_results
from core.store.recorder import TRAINED, expected_trainings
from core.store.runs import artifacts, read_results_file
from core.store.schema import dumps

if TYPE_CHECKING:
    from core.store.db import RunStore

log = logging.getLogger(__name__)

RUN_FILES = ("results.json", "events.jsonl")  # a folder with config.yaml and one of these is a run folder
# results.json status -> store status; anything else (running, missing) has no owner now: interrupted.
STATUS_FROM_RESULTS = {"done": RunStatus.DONE, "failed": RunStatus.FAILED, "cancelled": RunStatus.CANCELLED,
                       "interrupted": RunStatus.INTERRUPTED}
INSERT_RUN = ("INSERT INTO runs (id, name, created, updated, status, progress, eta, error, config, results, "
              "summary, run_dir, artifacts, source, pid, host, heartbeat, started, finished, attempts) "
              "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, 'cli', NULL, NULL, NULL, ?, ?, 1)")
INSERT_EVENT = ("INSERT INTO events (run_id, seq, time, kind, source, step, epoch, metrics, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


@dataclass
class Reindexed:
    """What reindexing did with one folder."""

    folder: str            # the folder's name: the run id when it was added
    action: str            # 'added' or 'skipped'
    status: str = ""       # the status an added run was given
    events: int = 0        # events imported
    reason: str = ""       # why it was skipped, or a note on an added run (bad event lines, results left out)


@dataclass
class ReindexReport:
    """Every run folder reindexing looked at: added, skipped (with why), and how many the store had already."""

    data_dir: Path
    rows: list[Reindexed] = field(default_factory=list)
    known: int = 0         # run folders already in the store, left alone

    @property
    def added(self) -> list[str]:
        """Ids of the runs added to the store."""
        return [r.folder for r in self.rows if r.action == "added"]

    @property
    def skipped(self) -> list[Reindexed]:
        """The run folders left out, each with its reason."""
        return [r for r in self.rows if r.action == "skipped"]

    def summary(self) -> str:
        """One line: how many runs were added, skipped and already there."""
        return (f"{len(self.added)} run(s) added, {len(self.skipped)} skipped, {self.known} already in the store "
                f"({self.data_dir})")


def candidate_folders(data_dir: Path) -> list[Path]:
    """Sub-folders of the data dir that may hold a run (not sweeps, which hold sweep.json, nor hidden ones)."""
    try:
        entries = sorted(data_dir.iterdir())
    except OSError as err:
        log.warning("cannot list the run store folder '%s' (%s): nothing to reindex", data_dir, err)
        return []
    return [p for p in entries if p.is_dir() and not p.name.startswith((".", "sweep-"))
            and not (p / "sweep.json").exists()]


def reindex(store: RunStore) -> ReindexReport:
    """Add to the store every run folder under its data dir that it does not know yet; returns the report."""
    report = ReindexReport(store.data_dir)
    known_ids, known_dirs = set(), set()
    for run_id, run_dir in store._read("SELECT id, run_dir FROM runs"):
        known_ids.add(run_id)
        known_dirs.add(run_dir)
    for folder in candidate_folders(store.data_dir):
        has_config = (folder / "config.yaml").is_file()
        has_run_files = any((folder / name).is_file() for name in RUN_FILES)
        if not has_config and not has_run_files:
            continue  # not a run folder (e.g. someone's notes): nothing to say about it
        if str(folder) in known_dirs:
            report.known += 1
            continue
        if folder.name in known_ids:
            row = Reindexed(folder.name, "skipped", reason="a run with this id is already in the store, "
                            "recorded with another folder")
        elif not has_config:
            row = Reindexed(folder.name, "skipped", reason="no config.yaml")
        elif not has_run_files:
            row = Reindexed(folder.name, "skipped", reason="config.yaml only (no results.json or events.jsonl): "
                            "the run never started")
        else:
            row = _add(store, folder)
        if row.action == "skipped":
            log.warning("reindex: '%s' skipped: %s", folder, row.reason)
        else:
            log.info("reindex: run %s added (%s, %d events)%s", row.folder, row.status, row.events,
                     f"; {row.reason}" if row.reason else "")
        report.rows.append(row)
    store.notice = None  # whatever the notice asked for has just been done
    log.info("reindex: %s", report.summary())
    return report


def _add(store: RunStore, folder: Path) -> Reindexed:
    """Add one run folder to the store (or say why not)."""
    try:
        cfg = config_mod.validate(config_mod.read_file(folder / "config.yaml"))
    except KdlabError as err:
        return Reindexed(folder.name, "skipped", reason=f"invalid config.yaml: {one_line(err)}")
    config = cfg.to_dict()
    notes = []
    results = read_results_file(folder)
    if results is None and (folder / "results.json").is_file():
        notes.append("results.json unreadable, left out")
    if results is not None:
        try:
            read_results(results)
        except ResultsError as err:
            notes.append(f"results.json left out ({one_line(err)})")
            results = None
    events, bad = read_events(folder / "events.jsonl")
    if bad:
        notes.append(f"{bad} bad line(s) in events.jsonl skipped")
    said = str((results or {}).get("status") or "missing")
    status = STATUS_FROM_RESULTS.get(said, RunStatus.INTERRUPTED)
    first, last = _times(folder, events)
    error = _error(events) if status == RunStatus.FAILED else None
    note = (f"reindexed from its folder: results.json says {said}, so the run is {status.value}"
            + ("; resume it to continue from its checkpoints" if status in RunStatus.RESUMABLE else ""))
    events.append({"time": time.time(), "kind": "info", "source": "store", "step": None, "epoch": None,
                   "metrics": {}, "message": note})
    with store._tx() as conn:
        # Checked again inside the transaction: another process may have added it meanwhile.
        if conn.execute("SELECT 1 FROM runs WHERE id = ? OR run_dir = ?", (folder.name, str(folder))).fetchone():
            return Reindexed(folder.name, "skipped", reason="added to the store by another process meanwhile")
        conn.execute(INSERT_RUN, (
            folder.name, cfg.name, first, last, status.value, _progress(status, events, cfg), error, dumps(config),
            dumps(results) if results is not None else None, dumps(headline(results, config)), str(folder),
            dumps(artifacts(folder, results)), first, last))
        conn.executemany(INSERT_EVENT, [
            (folder.name, seq, e["time"], e["kind"], e["source"], e["step"], e["epoch"], dumps(e["metrics"]),
             e["message"]) for seq, e in enumerate(events, start=1)])
    return Reindexed(folder.name, "added", status.value, len(events) - 1, "; ".join(notes))


def read_events(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The events of an events.jsonl (kind, source, time, step, epoch, metrics, message) and how many lines were bad."""
    events: list[dict[str, Any]] = []
    bad = 0
    try:
        lines = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return events, 0
    except OSError as err:
        log.warning("'%s' cannot be read (%s): the run is added without its events", path, err)
        return events, 0
    with lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(_event(json.loads(line)))
            except (ValueError, TypeError, KeyError) as err:  # a torn last line after a crash, or a foreign one
                bad += 1
                log.debug("'%s': line skipped (%s)", path, err)
    return events, bad


def _event(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict) or not isinstance(d["kind"], str) or not d["kind"]:
        raise ValueError("not an event object with a kind")
    t = float(d["time"])
    if not math.isfinite(t):
        raise ValueError(f"time {t} is not finite")
    metrics = d.get("metrics") or {}
    if not isinstance(metrics, dict):
        raise ValueError("metrics is not an object")
    return {"time": t, "kind": d["kind"], "source": str(d.get("source") or ""), "step": _int(d.get("step")),
            "epoch": _int(d.get("epoch")), "metrics": metrics, "message": str(d.get("message") or "")}


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _times(folder: Path, events: list[dict[str, Any]]) -> tuple[float, float]:
    """(created, finished): the first and last event times, else the files' modification times."""
    if events:
        times = [e["time"] for e in events]
        return min(times), max(times)
    stamps = []
    for name in ("config.yaml", *RUN_FILES):
        try:
            stamps.append(os.stat(folder / name).st_mtime)
        except FileNotFoundError:
            continue
    return min(stamps), max(stamps)


def _error(events: list[dict[str, Any]]) -> str:
    """The one-line error of a failed run: its last failure event's message, if one was recorded."""
    for e in reversed(events):
        if e["kind"] == "failed" and e["message"]:
            return one_line(e["message"])[:500]
    return "failed (the run folder does not say why; see its kdlab.log)"


def _progress(status: RunStatus, events: list[dict[str, Any]], cfg: Any) -> float:
    """1 for a done run, else the trainings its events say were finished, over those it expects."""
    if status == RunStatus.DONE:
        return 1.0
    finished = {e["source"] for e in events if e["kind"] == "done" and e["source"].startswith(TRAINED)}
    return min(len(finished) / max(expected_trainings(cfg), 1), 0.99)
