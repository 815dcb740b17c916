"""Reading the store: one run, run listings, events since a seq, and tidy metric frames for plots."""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from core.lifecycle import RunStatus
from core.results import HEADLINE_KEYS
from core.store.frames import MAX_POINTS, downsample
from core.store.schema import Database, StoreError

if TYPE_CHECKING:  # pandas is imported where a frame is built: `kdlab presets` need not pay for it
    import pandas as pd

log = logging.getLogger(__name__)

_RUN_COLUMNS = ("id", "name", "created", "updated", "status", "progress", "eta", "error", "config",
                "results", "summary", "run_dir", "artifacts", "source", "pid", "host", "heartbeat",
                "started", "finished", "attempts", "sweep_id", "trial")
_LIST_COLUMNS = ("id", "name", "status", "progress", "eta", "created", "updated", "started", "finished",
                 "source", "error", "run_dir", "attempts", "sweep_id", "trial", "summary")


@dataclass
class RunRecord:
    """One row of the runs table, JSON columns decoded."""

    id: str
    name: str
    status: RunStatus
    created: float
    updated: float
    progress: float
    eta: float | None
    error: str | None
    config: dict[str, Any]
    results: dict[str, Any] | None   # results.json as stored; validate with core.results.read_results
    summary: dict[str, Any]          # core.results.headline of the results, for listings
    run_dir: Path
    artifacts: dict[str, Any]
    source: str
    pid: int | None = None
    host: str | None = None
    heartbeat: float | None = None
    started: float | None = None
    finished: float | None = None
    attempts: int = 0
    sweep_id: str | None = None      # the sweep this run is a trial of, if any
    trial: int | None = None         # its trial number there (the latest attempt's)

    @property
    def dir_exists(self) -> bool:
        return self.run_dir.is_dir()

    @property
    def resumable(self) -> bool:
        return self.status in RunStatus.RESUMABLE

    def to_dict(self) -> dict[str, Any]:
        """Plain data (status and run_dir as strings)."""
        d = asdict(self)
        d["status"] = self.status.value
        d["run_dir"] = str(self.run_dir)
        return d


class RunQueries(Database):
    """Reading runs and their events; nothing here writes except the periodic reap of dead runs."""

    if TYPE_CHECKING:
        def _maybe_reap(self, every: float = 5.0) -> None: ...

    # -- events ---------------------------------------------------------------------------------

    def last_seq(self, run_id: str) -> int:
        """The seq of a run's latest event (0 if none)."""
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?", (run_id,))[0][0])

    def events(self, run_id: str, since: int = 0, *, kinds: Iterable[str] | None = None,
               limit: int | None = None) -> list[dict[str, Any]]:
        """Events with seq > `since`, oldest first (poll with the last seq seen)."""
        sql = "SELECT seq, time, kind, source, step, epoch, metrics, message FROM events WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, int(since)]
        if kinds is not None:
            kinds = list(kinds)
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            params += kinds
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = self._read(sql, params)
        if not rows and since == 0:
            self._require(run_id)
        out = []
        for seq, t, kind, source, step, epoch, metrics, message in rows:
            try:
                decoded = json.loads(metrics) if metrics else {}
            except ValueError as err:  # one damaged event must not hide the others
                log.warning("run %s, event %d: its metrics are not valid JSON (%s); shown without them",
                            run_id, seq, err)
                decoded = {}
            out.append({"seq": seq, "time": t, "kind": kind, "source": source, "step": step, "epoch": epoch,
                        "metrics": decoded, "message": message})
        return out

    def epoch_metrics(self, run_id: str) -> pd.DataFrame:
        """Per-epoch metrics, tidy: one row per (source, epoch, metric) with its value."""
        return self._metric_frame(run_id, "epoch", None, None)

    def step_metrics(self, run_id: str, metrics: Iterable[str] | None = None,
                     max_points: int | None = MAX_POINTS) -> pd.DataFrame:
        """Per-step metrics, tidy (source, step, metric, value), at most `max_points` per series."""
        return self._metric_frame(run_id, "step", set(metrics) if metrics is not None else None, max_points)

    def _metric_frame(self, run_id: str, kind: str, wanted: set[str] | None,
                      max_points: int | None) -> pd.DataFrame:
        import pandas as pd

        rows = []
        for e in self.events(run_id, kinds=[kind]):
            if e[kind] is None:
                continue  # an event without its step (or epoch) cannot be placed on the x axis
            for metric, value in e["metrics"].items():
                if (wanted is None or metric in wanted) and isinstance(value, (int, float)):
                    rows.append((e["source"], int(e[kind]), metric, float(value)))
        df = pd.DataFrame(rows, columns=["source", kind, "metric", "value"])
        # A resumed run may repeat a step or an epoch: the latest record wins.
        df = df.drop_duplicates(["source", kind, "metric"], keep="last")
        if max_points:
            df = downsample(df, x=kind, y="value", by=["source", "metric"], max_points=max_points)
        return df.reset_index(drop=True)

    # -- runs -----------------------------------------------------------------------------------

    def _decode(self, run_id: str, column: str, text: str | None, default: Any) -> Any:
        if text is None:
            return default
        try:
            return json.loads(text)
        except ValueError as err:
            raise StoreError(f"run {run_id}", f"its stored {column} is not valid JSON ({err})",
                             "delete the run or re-run its config; other runs are unaffected") from None

    def _record(self, row: sqlite3.Row | tuple) -> RunRecord:
        d = dict(zip(_RUN_COLUMNS, row))
        run_id = d["id"]
        config = self._decode(run_id, "config", d["config"], None)
        if not isinstance(config, dict):
            raise StoreError(f"run {run_id}", "its stored config is not a mapping",
                             "delete the run or re-run its config; other runs are unaffected")
        return RunRecord(
            id=run_id, name=d["name"], status=RunStatus(d["status"]), created=d["created"], updated=d["updated"],
            progress=d["progress"], eta=d["eta"], error=d["error"], config=config,
            results=self._decode(run_id, "results", d["results"], None),
            summary=self._decode(run_id, "summary", d["summary"], {}) or {}, run_dir=Path(d["run_dir"]),
            artifacts=self._decode(run_id, "artifacts", d["artifacts"], {}) or {}, source=d["source"],
            pid=d["pid"], host=d["host"], heartbeat=d["heartbeat"], started=d["started"],
            finished=d["finished"], attempts=d["attempts"], sweep_id=d["sweep_id"], trial=d["trial"])

    def get_run(self, run_id: str, *, require_dir: bool = False) -> RunRecord:
        """One run; RunNotFound for an unknown id, StoreError for damaged JSON or (require_dir) a missing folder."""
        self._maybe_reap()
        rows = self._read(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise self._not_found(run_id)
        record = self._record(rows[0])
        if require_dir and not record.dir_exists:
            raise StoreError(f"run {run_id}", f"its folder '{record.run_dir}' is missing (moved or deleted)",
                             "its stored results and events are still shown; to train it again, submit its "
                             "config as a new run")
        return record

    def find_by_dir(self, run_dir: str | Path) -> RunRecord | None:
        """The latest run recorded with this output folder, if any."""
        folder = str(Path(run_dir).expanduser().absolute())
        rows = self._read("SELECT id FROM runs WHERE run_dir = ? ORDER BY created DESC LIMIT 1", (folder,))
        return self.get_run(rows[0][0]) if rows else None

    def run_ids(self) -> list[str]:
        """Every run id, newest first."""
        return [r[0] for r in self._read("SELECT id FROM runs ORDER BY created DESC, id DESC")]

    def list_runs(self, status: str | Iterable[str] | None = None, *, source: str | None = None,
                  limit: int | None = None, sweep_id: str | None = None) -> pd.DataFrame:
        """Runs newest first, one row each, with the headline numbers of their results.

        sweep_id: only that sweep's trials, in trial order.
        """
        import pandas as pd

        self._maybe_reap()
        sql = f"SELECT {', '.join(_LIST_COLUMNS)} FROM runs"
        where, params = [], []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += [str(s) for s in statuses]
        if source is not None:
            where.append("source = ?")
            params.append(source)
        if sweep_id is not None:
            where.append("sweep_id = ?")
            params.append(sweep_id)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY trial, created" if sweep_id is not None else " ORDER BY created DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = []
        for row in self._read(sql, params):
            d = dict(zip(_LIST_COLUMNS, row))
            summary = self._listed_summary(d["id"], d.pop("summary"))
            for key in HEADLINE_KEYS:
                d[key] = summary.get(key)
            rows.append(d)
        columns = [c for c in _LIST_COLUMNS if c != "summary"] + list(HEADLINE_KEYS)
        df = pd.DataFrame(rows, columns=columns)
        for col in ("created", "updated", "started", "finished"):
            # Local wall-clock time, as the CLI prints it; NaT where not set (a run not yet finished).
            df[col] = pd.to_datetime([datetime.fromtimestamp(t) if pd.notna(t) else pd.NaT for t in df[col]])
        for col in ("progress", "eta", *HEADLINE_KEYS):
            df[col] = pd.to_numeric(df[col], errors="coerce")
        return df

    @staticmethod
    def _listed_summary(run_id: str, text: str | None) -> dict[str, Any]:
        try:
            summary = json.loads(text or "{}")
        except ValueError as err:  # a damaged row still lists; get_run names the problem
            log.warning("run %s: its stored summary is not valid JSON (%s); listed without numbers", run_id, err)
            return {}
        return summary if isinstance(summary, dict) else {}
