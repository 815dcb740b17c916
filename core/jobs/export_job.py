"""An export (core.export.export_model) as a job of the JobManager's queue.

It waits for the device like a run or a sweep, so an export started while a run trains does not
slow it down twice over, and the pages follow it the way they follow an ExportHandle: `done`,
`message`, `fraction`, then `result` or `error`. It is not a store row: its result is the export
folder, whose card.json says everything.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import KdlabError
from core.lifecycle import RunStatus, final_status
from core.train import CancelToken, Event

if TYPE_CHECKING:
    from core.export.export import ExportResult
    from core.jobs.manager import JobManager

log = logging.getLogger(__name__)

EXPORT_DEVICE = "cpu"  # exports verify and time on the CPU (onnxruntime's CPU provider), whatever trained


@dataclass
class ExportJob:
    """One queued or running export of a run's (or sweep trial's) model into `out`."""

    run: str | Path
    out: Path
    options: dict[str, Any]           # keyword arguments of export_model: model, formats, quantize, ...
    device: str = EXPORT_DEVICE
    cancel: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"
    status: RunStatus = RunStatus.QUEUED
    submitted: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)
    events: list[Event] = field(default_factory=list)
    result: ExportResult | None = None
    error: str | None = None          # one line, when it failed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def key_of(out: str | Path) -> str:
        """The queue key of the export into `out` (one export per folder at a time)."""
        return f"export:{Path(out).expanduser().absolute()}"

    @property
    def key(self) -> str:
        return self.key_of(self.out)

    @property
    def run_id(self) -> None:
        return None  # an export is a folder, not a store run

    # -- what pages read ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finished.is_set()

    @property
    def cancelled(self) -> bool:
        return self.status in (RunStatus.CANCELLED, RunStatus.INTERRUPTED)

    @property
    def message(self) -> str:
        """The latest progress message."""
        with self._lock:
            if not self.events:
                return "waiting for the device" if self.state == "queued" else "starting"
            return self.events[-1].message or self.events[-1].kind

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] from the stage events' step counts."""
        if self.done:
            return 1.0
        with self._lock:
            m = self.events[-1].metrics if self.events else {}
        return min(1.0, m.get("step", 0) / max(m.get("steps", 1), 1))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the export has ended (or `timeout` s); True when it has."""
        return self.finished.wait(timeout)

    def _record(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    # -- the QueuedJob protocol -----------------------------------------------------------------

    def on_queued(self, manager: JobManager) -> None:
        manager._exports[self.key] = self  # the manager's index of exports (package-private)

    def execute(self, manager: JobManager) -> None:
        from core.export import export_model  # heavy imports (onnx, onnxruntime), only where a job runs

        self.status = RunStatus.RUNNING
        exc: Exception | None = None
        try:
            self.result = export_model(self.run, self.out, cancel=self.cancel, events=self._record, **self.options)
        except Exception as err:  # noqa: BLE001 - shown on the page, and the next job goes on
            exc = err
        self.status, self.error = final_status(exc, shutting_down=manager.shutting_down or self.cancel.shutdown)
        if self.status == RunStatus.FAILED and not isinstance(exc, KdlabError):
            log.warning("export of %s into %s failed", self.run, self.out, exc_info=exc)

    def on_finished(self, manager: JobManager) -> None:
        """Nothing to release: an export holds no heartbeat."""

    def drop(self, manager: JobManager, status: RunStatus) -> None:
        self.status = status
        self._record(Event("info", "export", message="cancelled before it started"
                           if status == RunStatus.CANCELLED else "stopped before it started: the app shut down"))
