"""JobManager: a bounded FIFO queue of experiments run by background worker threads.

By default one training job runs per device at a time (one worker thread per device: a CPU job and a
CUDA job may run side by side, two CUDA jobs on the same GPU wait in turn). Everything a page shows
about a run goes through the run store, so a page reload or an app restart loses nothing; workers
never touch the UI.

Sweeps (grids and searches) share the same queue and workers, so a sweep waits for the run on its
device and the other way round. A sweep is a row of the store (queued at submit) and each trial a
run row, so pages follow it through the store; one stopped by an app restart is resumed in its own
folder (see `resume_sweep`), where its finished trials are kept. Exports
(core.jobs.export_job) queue on the CPU worker the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from core import config as config_mod
from core.config import RunConfig
from core.device import resolve_device
from core.errors import KdlabError
from core.jobs.export_job import ExportJob
from core.jobs.job import Job, QueuedJob, SweepJob
from core.lifecycle import RunStatus, check_resumable
from core.store import Heartbeat, RunStore, StoreError, new_run_id
from core.search.spec import SearchSpec, read_search_folder
from core.sweep_grid import Axis, check_grid, read_sweep_spec
from core.threads import lower_priority
from core.train import Event

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUED = 16


class JobError(KdlabError):
    """A job cannot be queued, cancelled or resumed."""


class QueueFull(JobError):
    """Too many runs are already waiting."""


def device_key(name: str) -> str:
    """The device a config's `device` runs on, as a worker key ('cpu', 'cuda:0', 'mps')."""
    try:
        device = resolve_device(name)
    except KdlabError as err:
        # The job fails in prepare with the same error, recorded in the store; until then it waits here.
        log.debug("device '%s' does not resolve (%s): its jobs queue under that name", name, err)
        return str(name)
    if device.type == "cuda" and device.index is None:
        return "cuda:0"
    return str(device)


class JobManager:
    """Queue experiments, run them in background threads, cancel and resume them; the store records all."""

    def __init__(self, store: RunStore | None = None, *, max_queued: int = DEFAULT_MAX_QUEUED,
                 per_device: int = 1, heartbeat_every: float = 2.0, autostart: bool = True) -> None:
        self.store = store if store is not None else RunStore()
        self.max_queued = max_queued      # waiting jobs (running ones not counted)
        self.per_device = per_device      # jobs running at once on one device
        self._cv = threading.Condition(threading.Lock())
        self._queue: list[QueuedJob] = []          # FIFO
        self._running: dict[str, QueuedJob] = {}   # by job key
        self._jobs: dict[str, Job] = {}            # every run given to this manager, by run id
        self._sweeps: dict[str, SweepJob] = {}     # every sweep, by folder name
        self._exports: dict[str, ExportJob] = {}   # every export, by ExportJob.key_of(out)
        self._workers: dict[str, list[threading.Thread]] = {}
        self._started = autostart
        self._closed = False
        self.shutting_down = False                 # set once shutdown() began: stopped jobs are interrupted
        self.heartbeat = Heartbeat(self.store, heartbeat_every)

    # -- queueing -------------------------------------------------------------------------------

    def submit(self, config: RunConfig | dict[str, Any], *, name: str | None = None,
               source: str = "dashboard") -> str:
        """Queue an experiment; returns its run id. Raises ConfigError for an invalid config, QueueFull."""
        cfg = config if isinstance(config, RunConfig) else config_mod.validate(dict(config))
        device = device_key(cfg.device)
        with self._cv:
            self._check_open()
            self._check_room()
            run_id = self.store.create_run(cfg, name=name, source=source, status=RunStatus.QUEUED)
            self._enqueue(Job(run_id, cfg, self.store.run_dir_for(run_id), device))
        return run_id

    def resume(self, run_id: str) -> str:
        """Queue an interrupted, failed or cancelled run again, in its own folder with its stored config.

        Its trainings continue from their last per-epoch checkpoints; finished ones are not redone.
        """
        record = self.store.get_run(run_id)
        check_resumable(run_id, record.status)
        if record.started is not None and not record.dir_exists:
            raise StoreError(f"run {run_id}", f"its folder '{record.run_dir}' is missing (moved or deleted), "
                             "so there is nothing to resume from", "submit its config as a new run")
        cfg = config_mod.validate(record.config)
        with self._cv:
            self._check_open()
            earlier = self._jobs.get(run_id)
            if earlier is not None and earlier.state != "finished":
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

    def _enqueue(self, job: QueuedJob) -> None:
        self._queue.append(job)
        job.on_queued(self)
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
        lower_priority()  # the UI threads get the CPU first; training still has it when they are idle
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
            try:
                job.execute(self)  # records its own outcome (store row, or sweep status)
            except BaseException:  # noqa: BLE001 - a worker must survive anything a job does
                log.exception("job %s: unexpected error outside its own recording; the worker goes on", job.key)
            finally:
                with self._cv:
                    self._running.pop(job.key, None)
                    job.state = "finished"
                    job.on_finished(self)
                    job.finished.set()
                    self._cv.notify_all()

    # -- exports --------------------------------------------------------------------------------

    def submit_export(self, run: str | Path, out: str | Path, **options: Any) -> ExportJob:
        """Queue an export of a run's model into `out` (options as core.export.export_model); returns the job.

        It waits for the CPU worker like a run; bad input (run, model, formats, --out) fails the job
        with its one-line message, which the job's `error` holds.
        """
        job = ExportJob(run, Path(out), dict(options))
        with self._cv:
            self._check_open()
            earlier = self._exports.get(job.key)
            if earlier is not None and not earlier.done:
                raise JobError(f"export into {out}", "is already queued or running here", "wait for it")
            self._check_room()
            self._enqueue(job)
        return job

    def cancel_export(self, job: ExportJob) -> bool:
        """Cancel a queued export, or stop a running one at its next check; False if it had ended."""
        with self._cv:
            return self._cancel(job)

    # -- sweeps ---------------------------------------------------------------------------------

    def submit_sweep(self, base: RunConfig | dict[str, Any], axes: list[Axis], *, seeds: int | None = None,
                     out: str | Path | None = None) -> str:
        """Queue a grid sweep of `base` over `axes` (see submit_search); returns its id."""
        from core.search.space import space_from_axes
        from core.search.spec import make_spec

        cfg = base if isinstance(base, RunConfig) else config_mod.validate(dict(base))
        check_grid(cfg, axes, seeds)
        return self.submit_search(cfg, make_spec(cfg, search="grid", space=space_from_axes(axes), seeds=seeds),
                                  out=out)

    def submit_search(self, base: RunConfig | dict[str, Any], spec: SearchSpec, *,
                      out: str | Path | None = None) -> str:
        """Queue a search of `base` (a queued row of the store's sweeps); returns its id (the folder's name).

        `out` defaults to a new `sweep-*` folder in the run store's folder; a stopped sweep's own
        folder continues it.
        """
        from core.search.engine import study_name
        from core.search.study import storage_url

        cfg = base if isinstance(base, RunConfig) else config_mod.validate(dict(base))
        folder = (Path(out) if out is not None else self.store.data_dir / f"sweep-{new_run_id(cfg.name)}").absolute()
        with self._cv:
            self._check_open()
            if self.sweep_active(folder.name):
                raise JobError(f"sweep {folder.name}", "is already queued or running here", "wait for it")
            self._check_room()
            existing = self.store.find_sweep_by_dir(folder)
            if existing is None:
                self.store.create_sweep(folder.name, cfg.to_dict(), spec.model_dump(mode="json"), sweep_dir=folder,
                                        storage=storage_url(self.store.data_dir),
                                        study=study_name(folder.name, spec), name=cfg.name, source="dashboard",
                                        status=RunStatus.QUEUED)
            else:
                self.store.requeue_sweep(existing.id)
            job = SweepJob(folder.name, cfg, spec, folder, device_key(cfg.device))
            self._enqueue(job)
        return job.sweep_id

    def resume_sweep(self, folder: str | Path) -> str:
        """Queue a stopped sweep again in its own folder; its finished trials are not trained again."""
        folder = Path(folder).absolute()
        record = self.store.find_sweep_by_dir(folder)
        if record is not None:
            return self.submit_search(record.config, SearchSpec.model_validate(record.spec), out=folder)
        found = read_search_folder(folder)  # a folder from another store: a new study, the same checkpoints
        if found is not None:
            return self.submit_search(found[0], found[1], out=folder)
        base, axes, seeds = read_sweep_spec(folder)  # a folder from before sweeps were store rows
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
            return self._cancel(job)

    def wait_sweep(self, sweep_id: str, timeout: float | None = None) -> str:
        """Wait until a sweep of this manager has finished; returns its status."""
        job = self._sweeps[sweep_id]
        job.finished.wait(timeout)
        return job.status

    # -- control --------------------------------------------------------------------------------

    def cancel(self, run_id: str) -> bool:
        """Cancel a queued run (removed from the queue) or a running one (stops at its next step).

        Returns False if the run had already finished.
        """
        with self._cv:
            job = self._jobs.get(run_id)
            if job is not None and job.state != "finished":
                return self._cancel(job)
        record = self.store.get_run(run_id)  # RunNotFound for an unknown id
        if record.status in RunStatus.FINISHED:
            return False
        raise JobError(f"run {run_id}", f"is {record.status} in another process (pid {record.pid})",
                       "stop it where it runs (Ctrl-C for a CLI run)")

    def _cancel(self, job: QueuedJob) -> bool:
        """Cancel one of this manager's jobs (under the lock): drop it if waiting, else stop it at its next step."""
        if job in self._queue:
            self._queue.remove(job)
            self._drop(job, RunStatus.CANCELLED)
            self._cv.notify_all()
            return True
        if job.state == "running":
            job.cancel.cancel()
            return True
        return False

    def _drop(self, job: QueuedJob, status: RunStatus) -> None:
        """A job leaves the queue unrun, as `status`; it counts as finished even if recording that fails."""
        job.state = "finished"
        try:
            job.drop(self, status)
        finally:
            job.finished.set()

    def wait(self, run_id: str, timeout: float | None = None) -> str:
        """Wait until a run of this manager has finished; returns its stored status."""
        job = self._jobs.get(run_id)
        if job is not None:
            job.finished.wait(timeout)
        return self.store.get_run(run_id).status

    def queued(self) -> list[str]:
        """Ids of the waiting runs, in the order they will start."""
        with self._cv:
            return [j.run_id for j in self._queue if j.run_id is not None]

    def running(self) -> list[str]:
        """Ids of the runs training now."""
        with self._cv:
            return [j.run_id for j in self._running.values() if j.run_id is not None]

    def shutdown(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Stop: waiting runs and running ones (stopped at their next step) become interrupted, resumable."""
        with self._cv:
            if self._closed:
                return
            self.shutting_down = True
            waiting, self._queue = list(self._queue), []
            for job in self._running.values():
                job.cancel.cancel(shutdown=True)  # runs and sweeps alike
            running = list(self._running.values())
            self._closed = True
            self._cv.notify_all()
        for job in waiting:
            try:
                self._drop(job, RunStatus.INTERRUPTED)
            except StoreError as err:
                # Its owner (this process) is about to go: the store's reaper marks it interrupted then.
                log.warning("job %s was not marked interrupted in the store: %s", job.key, err)
        if wait:
            deadline = None if timeout is None else time.time() + timeout
            for job in running:
                job.finished.wait(None if deadline is None else max(deadline - time.time(), 0))
        self.heartbeat.stop()

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
