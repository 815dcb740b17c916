"""JobManager: a bounded FIFO queue of experiments run by background worker threads.

By default one training job runs per device at a time (one worker thread per device: a CPU job and a
CUDA job may run side by side, two CUDA jobs on the same GPU wait in turn). Everything a page shows
about a run goes through the run store, so a page reload or an app restart loses nothing; workers
never touch the UI.

Student sweeps share the same queue and workers, so a sweep waits for the run on its device and the
other way round. A sweep is a folder (as with `kdlab sweep`), not a store row: its progress is kept
here while it runs, and its results are in the folder's sweep.json after every point. One stopped by
an app restart is resumed by submitting it again into its own folder (see `resume_sweep`).
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import config as config_mod
from core.config import RunConfig
from core.device import resolve_device
from core.errors import Cancelled, KdlabError
from core.store import (ACTIVE, FINISHED, RESUMABLE, Heartbeat, RunStore, StoreError, StoreRecorder,
                        expected_trainings, new_run_id)
from core.sweep_grid import Axis, check_grid, read_sweep_spec, sweep_trainings
from core.train import CancelToken, Event, EventBus

DEFAULT_MAX_QUEUED = 16


class JobError(KdlabError):
    """A job cannot be queued, cancelled or resumed."""


class QueueFull(JobError):
    """Too many runs are already waiting."""


def device_key(name: str) -> str:
    """The device a config's `device` runs on, as a worker key ('cpu', 'cuda:0', 'mps')."""
    try:
        device = resolve_device(name)
    except KdlabError:
        return str(name)  # the job fails in prepare with the same error, recorded in the store
    if device.type == "cuda" and device.index is None:
        return "cuda:0"
    return str(device)


@dataclass
class Job:
    """One queued or running experiment of this manager."""

    run_id: str
    config: RunConfig
    run_dir: Path
    device: str
    cancel: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"  # queued -> running -> finished
    submitted: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        return self.run_id


@dataclass
class SweepJob:
    """One queued or running student sweep of this manager, written into the folder `out`."""

    sweep_id: str                     # the folder's name
    base: RunConfig
    axes: list[Axis]
    seeds: int | None
    out: Path
    device: str
    points: int
    total_trainings: int              # expected: teacher draws + scratch and KD students
    cancel: CancelToken = field(default_factory=CancelToken)
    state: str = "queued"             # queued -> running -> finished
    status: str = "queued"            # queued, running, done, failed, cancelled, interrupted
    trainings_done: int = 0
    points_done: int = 0
    stage: str = "waiting for the device"
    error: str | None = None
    submitted: float = field(default_factory=time.time)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def key(self) -> str:
        return f"sweep:{self.sweep_id}"

    @property
    def progress(self) -> float:
        """Finished trainings over expected ones, in [0, 1]; 1 only once the sweep is done."""
        if self.status == "done":
            return 1.0
        return min(self.trainings_done / max(self.total_trainings, 1), 0.99)

    def snapshot(self) -> dict[str, Any]:
        """A plain-dict view for pages (read without the manager's lock: values only grow)."""
        return {"id": self.sweep_id, "folder": str(self.out), "status": self.status,
                "progress": self.progress, "points": self.points, "points_done": self.points_done,
                "stage": self.stage, "error": self.error, "submitted": self.submitted,
                "axes": {a.field: list(a.values) for a in self.axes}}


class JobManager:
    """Queue experiments, run them in background threads, cancel and resume them; the store records all."""

    def __init__(self, store: RunStore | None = None, *, max_queued: int = DEFAULT_MAX_QUEUED,
                 per_device: int = 1, heartbeat_every: float = 2.0, autostart: bool = True) -> None:
        self.store = store if store is not None else RunStore()
        self.max_queued = max_queued      # waiting jobs (running ones not counted)
        self.per_device = per_device      # jobs running at once on one device
        self._cv = threading.Condition(threading.Lock())
        self._queue: list[Job | SweepJob] = []   # FIFO
        self._running: dict[str, Job | SweepJob] = {}  # by job key
        self._jobs: dict[str, Job] = {}
        self._sweeps: dict[str, SweepJob] = {}
        self._workers: dict[str, list[threading.Thread]] = {}
        self._started = autostart
        self._closed = False
        self._shutting_down = False
        self._heartbeat = Heartbeat(self.store, heartbeat_every)

    # -- queueing -------------------------------------------------------------------------------

    def submit(self, config: RunConfig | dict[str, Any], *, name: str | None = None,
               source: str = "dashboard") -> str:
        """Queue an experiment; returns its run id. Raises ConfigError for an invalid config, QueueFull."""
        cfg = config if isinstance(config, RunConfig) else config_mod.validate(dict(config))
        device = device_key(cfg.device)
        with self._cv:
            self._check_open()
            self._check_room()
            run_id = self.store.create_run(cfg, name=name, source=source, status="queued")
            self._enqueue(Job(run_id, cfg, self.store.run_dir_for(run_id), device))
        return run_id

    def resume(self, run_id: str) -> str:
        """Queue an interrupted, failed or cancelled run again, in its own folder with its stored config.

        Its trainings continue from their last per-epoch checkpoints; finished ones are not redone.
        """
        record = self.store.get_run(run_id)
        if record.status not in RESUMABLE:
            what = f"is {record.status}" if record.status in ACTIVE else "is done"
            raise JobError(f"run {run_id}", f"cannot be resumed: it {what}",
                           "resume only interrupted, failed or cancelled runs")
        if record.started is not None and not record.dir_exists:
            raise StoreError(f"run {run_id}", f"its folder '{record.run_dir}' is missing (moved or deleted), "
                             "so there is nothing to resume from", "submit its config as a new run")
        cfg = config_mod.validate(record.config)
        with self._cv:
            self._check_open()
            if run_id in self._running or any(isinstance(j, Job) and j.run_id == run_id for j in self._queue):
                raise JobError(f"run {run_id}", "is already queued or running here", "wait for it")
            self._check_room()
            self.store.requeue(run_id)
            self.store.append_events(run_id, [Event("info", "jobs", message="resumed: queued again")])
            self._enqueue(Job(run_id, cfg, record.run_dir, device_key(cfg.device)))
        return run_id

    def _check_open(self) -> None:
        if self._closed:
            raise JobError("jobs", "the job manager has been shut down", "start a new one")

    def _check_room(self) -> None:
        if len(self._queue) >= self.max_queued:
            raise QueueFull("queue", f"{len(self._queue)} runs are already waiting (at most {self.max_queued})",
                            "wait for one to start, or cancel a queued run")

    def _enqueue(self, job: Job | SweepJob) -> None:
        self._queue.append(job)
        if isinstance(job, SweepJob):
            self._sweeps[job.sweep_id] = job
        else:
            self._jobs[job.run_id] = job
            self._heartbeat.add(job.run_id, "queued")
        if self._started:
            self._ensure_workers(job.device)
        self._cv.notify_all()

    def _ensure_workers(self, device: str) -> None:
        workers = [t for t in self._workers.get(device, []) if t.is_alive()]
        while len(workers) < self.per_device:
            thread = threading.Thread(target=self._worker, args=(device,), daemon=True,
                                      name=f"kdlab-worker-{device}-{len(workers)}")
            thread.start()
            workers.append(thread)
        self._workers[device] = workers

    def start(self) -> None:
        """Start the workers (only needed with autostart=False)."""
        with self._cv:
            self._started = True
            for device in {j.device for j in self._queue}:
                self._ensure_workers(device)
            self._cv.notify_all()

    # -- running --------------------------------------------------------------------------------

    def _worker(self, device: str) -> None:
        while True:
            with self._cv:
                job = None
                while job is None:
                    if self._closed:
                        return
                    job = next((j for j in self._queue if j.device == device), None)
                    if job is None:
                        self._cv.wait()
                self._queue.remove(job)
                self._running[job.key] = job
                job.state = "running"
                if isinstance(job, Job):
                    self._heartbeat.add(job.run_id, "running")
            try:
                if isinstance(job, SweepJob):
                    self._execute_sweep(job)
                else:
                    self._execute(job)
            except BaseException:  # noqa: BLE001 - a worker must survive anything a job does
                pass
            finally:
                with self._cv:
                    self._running.pop(job.key, None)
                    job.state = "finished"
                    if isinstance(job, Job):
                        self._heartbeat.discard(job.run_id)
                    job.finished.set()
                    self._cv.notify_all()

    def _execute(self, job: Job) -> None:
        from core.pipeline import prepare, run_experiment  # heavy imports, only where a job runs

        store = self.store
        recorder = StoreRecorder(store, job.run_id, job.run_dir, expected_trainings(job.config))
        self._heartbeat.add(job.run_id, "running", recorder.flush)
        bus = EventBus(recorder)
        status, error, results = "failed", None, None
        try:
            store.start_run(job.run_id)
            job.cancel.check()
            prep = prepare(job.config, job.run_dir)
            for warning in prep.warnings:
                bus.emit(Event("info", "prepare", message=f"warning: {warning}"))
            job.cancel.check()
            results = run_experiment(prep, job.run_dir, bus, job.cancel)
            status = "done"
        except Cancelled:
            status = "interrupted" if self._shutting_down else "cancelled"
            bus.emit(Event("info", "jobs", message="stopped: the app shut down" if self._shutting_down
                           else "cancelled by user"))
        except KdlabError as err:
            error = str(err)
            bus.emit(Event("failed", "run", message=error))
        except Exception as err:  # noqa: BLE001 - recorded, and the next job goes on
            error = f"{type(err).__name__}: {err}"
            bus.emit(Event("failed", "run", message=traceback.format_exc(limit=20)))
        finally:
            recorder.close()
            try:
                store.finish_run(job.run_id, status, results=results, error=error)
            except StoreError:
                pass  # the owner's pid is gone when this process ends: the run reads as interrupted

    # -- sweeps ---------------------------------------------------------------------------------

    def submit_sweep(self, base: RunConfig | dict[str, Any], axes: list[Axis], *, seeds: int | None = None,
                     out: str | Path | None = None) -> str:
        """Queue a student sweep of `base` over `axes`; returns its id (the folder's name).

        Every grid point is validated first (ConfigError naming the field); `out` defaults to a new
        `sweep-*` folder in the run store's folder, where `core.sweep.find_sweeps` lists it.
        """
        cfg = base if isinstance(base, RunConfig) else config_mod.validate(dict(base))
        points = check_grid(cfg, axes, seeds)
        folder = Path(out) if out is not None else self.store.data_dir / f"sweep-{new_run_id(cfg.name)}"
        with self._cv:
            self._check_open()
            if self.sweep_active(folder.name):
                raise JobError(f"sweep {folder.name}", "is already queued or running here", "wait for it")
            self._check_room()
            job = SweepJob(folder.name, cfg, list(axes), seeds, folder, device_key(cfg.device), points,
                           sweep_trainings(cfg, axes, seeds))
            self._enqueue(job)
        return job.sweep_id

    def resume_sweep(self, folder: str | Path) -> str:
        """Queue a stopped sweep again in its own folder; its finished students are not trained again."""
        base, axes, seeds = read_sweep_spec(Path(folder))
        return self.submit_sweep(base, axes, seeds=seeds, out=folder)

    def sweep_active(self, sweep_id: str) -> bool:
        """Whether a sweep with this id (folder name) is queued or running in this manager."""
        job = self._sweeps.get(sweep_id)
        return job is not None and job.state != "finished"

    def sweeps(self) -> list[dict[str, Any]]:
        """Every sweep this manager was given, newest first, as plain dicts (see SweepJob.snapshot)."""
        with self._cv:
            jobs = sorted(self._sweeps.values(), key=lambda j: j.submitted, reverse=True)
        return [j.snapshot() for j in jobs]

    def cancel_sweep(self, sweep_id: str) -> bool:
        """Cancel a queued sweep, or stop a running one at its next step; False if it had finished."""
        with self._cv:
            job = self._sweeps.get(sweep_id)
            if job is None:
                raise JobError(f"sweep {sweep_id}", "is not a sweep of this app", "pick one from the list")
            if job in self._queue:
                self._queue.remove(job)
                job.state, job.status, job.stage = "finished", "cancelled", "cancelled before it started"
                job.finished.set()
                self._cv.notify_all()
                return True
            if job.state == "running":
                job.cancel.cancel()
                return True
            return False

    def wait_sweep(self, sweep_id: str, timeout: float | None = None) -> str:
        """Wait until a sweep of this manager has finished; returns its status."""
        job = self._sweeps[sweep_id]
        job.finished.wait(timeout)
        return job.status

    def _execute_sweep(self, job: SweepJob) -> None:
        from core.sweep import run_sweep  # heavy imports, only where a job runs

        def follow(event: Event) -> None:
            if event.kind == "done":
                job.trainings_done += 1
            elif event.kind == "stage" and event.message:
                job.stage = event.message

        def on_row(row: dict[str, Any]) -> None:
            job.points_done += 1

        job.status = "running"
        try:
            run_sweep(job.base, job.axes, job.out, job.seeds, EventBus(follow), job.cancel, on_row)
            job.status, job.stage = "done", f"done: {job.points} point(s)"
        except Cancelled:
            job.status = "interrupted" if self._shutting_down else "cancelled"
            job.stage = "stopped: the app shut down" if self._shutting_down else "cancelled by user"
        except KdlabError as err:
            job.status, job.error = "failed", str(err)
        except Exception as err:  # noqa: BLE001 - shown on the page, and the next job goes on
            job.status, job.error = "failed", f"{type(err).__name__}: {err}"

    # -- control --------------------------------------------------------------------------------

    def cancel(self, run_id: str) -> bool:
        """Cancel a queued run (removed from the queue) or a running one (stops at its next step).

        Returns False if the run had already finished.
        """
        with self._cv:
            job = self._jobs.get(run_id)
            if job is not None and job in self._queue:
                self._queue.remove(job)
                job.state = "finished"
                self._heartbeat.discard(run_id)
                self.store.append_events(run_id, [Event("info", "jobs", message="cancelled before it started")])
                self.store.set_status(run_id, "cancelled")
                job.finished.set()
                self._cv.notify_all()
                return True
            if job is not None and job.state == "running":
                job.cancel.cancel()
                return True
        record = self.store.get_run(run_id)  # RunNotFound for an unknown id
        if record.status in FINISHED:
            return False
        raise JobError(f"run {run_id}", f"is {record.status} in another process (pid {record.pid})",
                       "stop it where it runs (Ctrl-C for a CLI run)")

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Wait until a run of this manager has finished; returns its stored status."""
        job = self._jobs.get(run_id)
        if job is not None:
            job.finished.wait(timeout)
        return self.store.get_run(run_id).status

    def queued(self) -> list[str]:
        """Ids of the waiting runs, in the order they will start."""
        with self._cv:
            return [j.run_id for j in self._queue if isinstance(j, Job)]

    def running(self) -> list[str]:
        """Ids of the runs training now."""
        with self._cv:
            return [j.run_id for j in self._running.values() if isinstance(j, Job)]

    def shutdown(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Stop: waiting runs and running ones (stopped at their next step) become interrupted, resumable."""
        with self._cv:
            if self._closed:
                return
            self._shutting_down = True
            waiting, self._queue = list(self._queue), []
            for job in self._running.values():
                job.cancel.cancel()  # runs and sweeps alike
            running = list(self._running.values())
            self._closed = True
            self._cv.notify_all()
        for job in waiting:
            if isinstance(job, SweepJob):
                job.state, job.status = "finished", "interrupted"
                job.finished.set()
                continue
            self._heartbeat.discard(job.run_id)
            try:
                self.store.set_status(job.run_id, "interrupted")
            except StoreError:
                pass
            job.finished.set()
        if wait:
            deadline = None if timeout is None else time.time() + timeout
            for job in running:
                job.finished.wait(None if deadline is None else max(deadline - time.time(), 0))
        self._heartbeat.stop()

    def __enter__(self) -> "JobManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


_SHARED: dict[Path, JobManager] = {}
_SHARED_LOCK = threading.Lock()


def shared_manager(data_dir: str | Path | None = None, **kwargs: Any) -> JobManager:
    """One manager per data directory in this process, shared by every dashboard session.

    Two managers on one store would each run a job per device at the same time.
    """
    with _SHARED_LOCK:
        store = RunStore(data_dir)
        manager = _SHARED.get(store.data_dir)
        if manager is None or manager._closed:
            manager = JobManager(store, **kwargs)
            _SHARED[store.data_dir] = manager
        else:
            store.close()
        return manager
