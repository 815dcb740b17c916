"""The jobs a JobManager queues: one protocol, and its kinds: a run, a sweep (both store rows) and an export.

The manager only queues, starts, cancels and drops jobs through `QueuedJob`; what a kind of job
records, and where, is the job's own business.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from core.config import RunConfig
from core.errors import KdlabError
from core.lifecycle import STOP_MESSAGES, RunStatus, final_status
from core.store import expected_trainings, record_run
from core.search.spec import SearchSpec
from core.train import CancelToken, Event, EventBus

if TYPE_CHECKING:
    from core.jobs.manager import JobManager

log = logging.getLogger(__name__)

NOT_STARTED = {RunStatus.CANCELLED: "cancelled before it started",
               RunStatus.INTERRUPTED: "stopped before it started: the app shut down"}


class QueuedJob(Protocol):
    """What the manager needs of a job: where it runs, how to run it, and how it leaves the queue unrun."""

    device: str                  # worker key, e.g. 'cpu', 'cuda:0'
    state: str                   # queued -> running -> finished (the manager's view)
    cancel: CancelToken
    submitted: float
    finished: threading.Event    # set once the job will do nothing more

    @property
    def key(self) -> str:
        """Unique among this manager's jobs."""

    @property
    def run_id(self) -> str | None:
        """The store run this job records, None for a job that is no store row."""

    def on_queued(self, manager: JobManager) -> None:
        """Called (under the manager's lock) when the job enters the queue."""

    def execute(self, manager: JobManager) -> None:
        """Run the job in a worker thread, recording its own outcome; returns when it has ended."""

    def on_finished(self, manager: JobManager) -> None:
        """Called (under the manager's lock) after execute, however it ended."""

    def drop(self, manager: JobManager, status: RunStatus) -> None:
        """Leave the queue without running, as `status` (cancelled, or interrupted by a shutdown)."""


@dataclass
class Job:
    """One queued or running experiment of this manager, recorded in its run store."""

    run_id: str
    config: RunConfig
    run_dir: Path
    device: str
    cancel: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"
    submitted: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        return self.run_id

    def on_queued(self, manager: JobManager) -> None:
        manager._jobs[self.run_id] = self  # the manager's index of runs (package-private)
        manager.heartbeat.add(self.run_id, RunStatus.QUEUED)

    def execute(self, manager: JobManager) -> None:
        from core.pipeline import prepare, run_experiment  # heavy imports, only where a job runs

        try:
            with record_run(manager.store, self.run_id, self.run_dir, expected_trainings(self.config),
                            heartbeat=manager.heartbeat, shutting_down=lambda: manager.shutting_down) as recorder:
                bus = EventBus(recorder)
                manager.store.start_run(self.run_id)
                self.cancel.check()
                prep = prepare(self.config, self.run_dir)
                for warning in prep.warnings:
                    bus.emit(Event("info", "prepare", message=f"warning: {warning}"))
                self.cancel.check()
                run_experiment(prep, self.run_dir, bus, self.cancel)
        except Exception as err:  # noqa: BLE001 - recorded as the run's final status; the next job goes on
            log.debug("run %s ended with %s: %s (recorded in the store)", self.run_id, type(err).__name__, err)

    def on_finished(self, manager: JobManager) -> None:
        manager.heartbeat.discard(self.run_id)

    def drop(self, manager: JobManager, status: RunStatus) -> None:
        manager.heartbeat.discard(self.run_id)
        manager.store.append_events(self.run_id, [Event("info", "jobs", message=NOT_STARTED[status])])
        manager.store.set_status(self.run_id, status)


@dataclass
class SweepJob:
    """One queued or running sweep (a grid or a search) of this manager: a store row with trial runs."""

    sweep_id: str                     # the folder's name, and its row in the store
    base: RunConfig
    spec: SearchSpec
    out: Path
    device: str
    cancel: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"
    status: RunStatus = RunStatus.QUEUED
    trials_done: int = 0
    stage: str = "waiting for the device"
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def key_of(sweep_id: str) -> str:
        """The queue key of the sweep in folder `sweep_id` (apart from run ids)."""
        return f"sweep:{sweep_id}"

    @property
    def key(self) -> str:
        return self.key_of(self.sweep_id)

    @property
    def run_id(self) -> None:
        return None  # its trials are the store's runs; the sweep itself is a sweeps row

    @property
    def points(self) -> int:
        return self.spec.trials

    @property
    def progress(self) -> float:
        """Trials done over the budget, in [0, 1]; 1 only once the sweep is done."""
        if self.status == RunStatus.DONE:
            return 1.0
        return min(self.trials_done / max(self.spec.trials, 1), 0.99)

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict view for pages (read without the manager's lock: values only grow)."""
        return {"id": self.sweep_id, "folder": str(self.out), "status": self.status.value,
                "progress": self.progress, "points": self.points, "points_done": self.trials_done,
                "stage": self.stage, "error": self.error, "submitted": self.submitted,
                "search": self.spec.search, "space": [d.text() for d in self.spec.dimensions]}

    def on_queued(self, manager: JobManager) -> None:
        manager._sweeps[self.sweep_id] = self  # the manager's index of sweeps (package-private)
        manager.heartbeat.add(self.sweep_id, RunStatus.QUEUED)

    def execute(self, manager: JobManager) -> None:
        from core.search.engine import run_search  # heavy imports, only where a job runs

        def follow(event: Event) -> None:
            if event.kind == "stage" and event.message:
                self.stage = event.message
                self.trials_done = int((event.metrics or {}).get("done", self.trials_done))

        def on_trial(outcome: Any) -> None:
            self.trials_done += 1

        self.status = RunStatus.RUNNING
        exc: Exception | None = None
        try:
            run_search(self.base, self.spec, self.out, store=manager.store, events=EventBus(follow),
                       cancel=self.cancel, source="dashboard", heartbeat=manager.heartbeat,
                       shutting_down=lambda: manager.shutting_down, on_trial=on_trial)
        except Exception as err:  # noqa: BLE001 - stored as the sweep's status; the next job goes on
            exc = err
        self.status, self.error = final_status(exc, shutting_down=manager.shutting_down)
        if self.status == RunStatus.FAILED and not isinstance(exc, KdlabError):
            log.warning("sweep %s failed", self.sweep_id, exc_info=exc)
        if self.status == RunStatus.DONE:
            self.stage = f"done: {self.trials_done} trial(s)"
        elif self.status in STOP_MESSAGES:
            self.stage = STOP_MESSAGES[self.status]

    def on_finished(self, manager: JobManager) -> None:
        manager.heartbeat.discard(self.sweep_id)

    def drop(self, manager: JobManager, status: RunStatus) -> None:
        manager.heartbeat.discard(self.sweep_id)
        self.status = status
        self.stage = NOT_STARTED[status]
        manager.store.finish_sweep(self.sweep_id, status, NOT_STARTED[status])
