"""Writing a live run into the store: an EventBus subscriber (events, progress, ETA), a heartbeat,
and `record_run`, the context that ties them to a run's final status."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from core.errors import KdlabError
from core.lifecycle import STOP_MESSAGES, RunStatus, final_status
from core.store.db import RunStore
from core.store.schema import RunNotFound, StoreError

log = logging.getLogger(__name__)

TRAINED = ("teacher/", "student/")  # event sources that are one training each
FLUSH_NOW = ("start", "epoch", "done", "failed", "cancelled", "stage", "info")
MAX_PENDING = 50_000  # events kept while the database is unwritable; the oldest go first


def expected_trainings(cfg: Any) -> int:
    """Trainings a run does: every teacher draw, plus a scratch and `rounds` distilled students per seed."""
    teachers = sum(t.seeds for t in cfg.teachers)
    return teachers + cfg.student.seeds * (1 + cfg.distill.rounds)


class StoreRecorder:
    """EventBus subscriber that records a run's events in the store and keeps its progress and ETA.

    Events are written in batches: a step event waits (at most `flush_every` seconds, or until
    `max_batch` are pending) and goes in with the next commit; every other kind is committed at once,
    so a page polling the store sees starts, epochs and stages without delay. Progress is finished
    trainings over expected trainings, plus step / total_steps within the current one; a training
    restored whole from its checkpoint counts as finished at its start event, and a resumed run's
    progress never goes below what its earlier attempt stored (`floor`).
    """

    def __init__(self, store: RunStore, run_id: str, run_dir: str | Path, total_trainings: int, *,
                 flush_every: float = 0.5, max_batch: int = 256,
                 clock: Callable[[], float] = time.time, floor: float | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.total = max(int(total_trainings), 1)
        self.flush_every = flush_every   # seconds a step event may wait in the buffer
        self.max_batch = max_batch
        self.clock = clock
        self.errors = 0                  # failed writes (the run goes on; the events stay buffered)
        self._lock = threading.Lock()
        self._pending: list[dict[str, Any]] = []
        self._last_flush = clock()
        self._finished = 0               # trainings done
        self._restored: set[str] = set()  # trainings counted as done at their start (restored whole)
        # The progress an earlier attempt reached (default: the store's): a resumed run's bar never drops.
        self.floor = min(self._stored_progress() if floor is None else float(floor), 0.99)
        self._current: str | None = None
        self._step = 0
        self._total_steps = 0
        self._trained = False            # a real optimiser step seen since the ETA baseline
        self._base_time = clock()        # ETA baseline: (time, progress) once restored work is skipped
        self._base_progress = 0.0
        self._sync_results = False
        self._gone = False               # the run was deleted from the store: stop writing

    # -- progress -------------------------------------------------------------------------------

    def _stored_progress(self) -> float:
        try:
            return float(self.store.get_run(self.run_id).progress)
        except StoreError as err:  # a new run or an unreadable store: count from zero
            log.debug("run %s: no stored progress to start from (%s)", self.run_id, err)
            return 0.0

    @property
    def counted(self) -> float:
        """Finished trainings over expected ones, plus the share done of the current one, in this attempt."""
        frac = min(self._step / self._total_steps, 1.0) if self._current and self._total_steps else 0.0
        # Below 1 until the run is finished: the comparison stage still runs after the last training.
        return min((self._finished + frac) / self.total, 0.99)

    @property
    def progress(self) -> float:
        """What the store shows: this attempt's count, never below what an earlier attempt reached.

        A resumed run recounts from zero; until its restored trainings have been seen again, the
        count is below the stored value, which therefore stays.
        """
        return max(self.counted, self.floor)

    @property
    def eta(self) -> float | None:
        """Seconds left, from the rate of this attempt's count since the baseline; None while unknown."""
        p = self.counted
        gained = p - self._base_progress
        elapsed = self.clock() - self._base_time
        if gained <= 0.005 or elapsed <= 0:
            return None
        return elapsed / gained * (1.0 - p)

    def _track(self, event: Any) -> None:
        source = event.source or ""
        if not source.startswith(TRAINED):
            if event.kind == "stage":
                self._sync_results = True  # the previous stage just rewrote results.json
            return
        if event.kind == "start":
            step = int(event.step or 0)
            total_steps = int(event.metrics.get("total_steps", 0) or 0)
            if total_steps and step >= total_steps:
                # Restored whole from its checkpoint: finished as of now, not at its `done` event.
                self._restored.add(source)
                self._finished += 1
                self._current, self._step, self._total_steps = None, 0, 0
            else:
                self._current, self._step, self._total_steps = source, step, total_steps
            if step and not self._trained:
                self._rebase()  # resumed from a checkpoint: restored steps took no time
        elif event.kind in ("step", "epoch") and source == self._current:
            self._step = int(event.step or self._step)
            self._trained = True
        elif event.kind == "done":
            was_trained = self._trained
            if source in self._restored:
                self._restored.discard(source)  # counted at its start already
            else:
                self._finished += 1
            self._current, self._step, self._total_steps = None, 0, 0
            if not was_trained:
                self._rebase()  # a training restored whole from its checkpoint

    def _rebase(self) -> None:
        self._base_time = self.clock()
        self._base_progress = self.counted

    # -- events ---------------------------------------------------------------------------------

    def __call__(self, event: Any) -> None:
        with self._lock:
            self._track(event)
            self._pending.append(event.to_dict())
            due = (event.kind in FLUSH_NOW or len(self._pending) >= self.max_batch
                   or self.clock() - self._last_flush >= self.flush_every)
            if due:
                self._flush_locked()

    def flush(self) -> None:
        """Write pending events, progress and ETA now (the heartbeat calls this too)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._gone:
            return
        try:
            self.store.append_events(self.run_id, self._pending, progress=self.progress, eta=self.eta)
            self._pending.clear()
            self._last_flush = self.clock()
            self._pending_sync()
        except RunNotFound:
            log.info("run %s was deleted from the store: its further events are not recorded", self.run_id)
            self._gone, self._pending = True, []
        except StoreError as err:
            # Keep the batch (the newest MAX_PENDING events); the next flush tries again.
            self.errors += 1
            (log.warning if self.errors == 1 else log.debug)(
                "run %s: %d event(s) wait for the store (%s); training goes on", self.run_id,
                len(self._pending), err)
            del self._pending[:-MAX_PENDING]

    def _pending_sync(self) -> None:
        if self._sync_results:
            self._sync_results = False
            self.store.sync_results(self.run_id, self.run_dir)

    def close(self) -> None:
        """Flush what is left."""
        self.flush()


class Heartbeat:
    """A daemon thread telling the store, every `interval` seconds, that this process's runs are alive.

    Each run may come with a flush function (its recorder's), so buffered events reach the store
    even when training goes quiet.
    """

    def __init__(self, store: RunStore, interval: float = 2.0) -> None:
        self.store = store
        self.interval = interval
        self._runs: dict[str, tuple[str, Callable[[], None] | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kdlab-heartbeat", daemon=True)
        self._thread.start()

    def add(self, run_id: str, status: str = RunStatus.RUNNING, flush: Callable[[], None] | None = None) -> None:
        """Beat for this run (as `status`), flushing its recorder first if given."""
        with self._lock:
            self._runs[run_id] = (status, flush)

    def discard(self, run_id: str) -> None:
        """Stop beating for this run (before its final status is written, so no beat can undo it)."""
        with self._lock:
            self._runs.pop(run_id, None)

    def beat(self) -> None:
        """One heartbeat now."""
        with self._lock:
            runs = dict(self._runs)
        for run_id, (_, flush) in runs.items():
            if flush is not None:
                try:
                    flush()
                except Exception:  # noqa: BLE001 - the heartbeat must outlive any one run
                    log.warning("run %s: flushing its events failed; the heartbeat goes on", run_id, exc_info=True)
        try:
            self.store.beat({run_id: status for run_id, (status, _) in runs.items()})
        except StoreError as err:
            # A missed beat is harmless unless it lasts `stale_after` seconds; the next one tries again.
            log.warning("heartbeat of %d run(s) not written: %s", len(runs), err)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        """End the heartbeat thread."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


def _final_event(status: RunStatus, exc: BaseException | None, error: str | None) -> Any:
    """The event that says why a run ended (None for a run that finished: its stages said so)."""
    from core.train.events import Event  # torch is loaded by then; `kdlab presets` need not load it

    if status == RunStatus.FAILED:
        if exc is None or isinstance(exc, KdlabError):
            return Event("failed", "run", message=error or "")
        # Not a user error: keep the traceback for whoever debugs it.
        return Event("failed", "run", message="".join(traceback.format_exception(type(exc), exc, exc.__traceback__,
                                                                                limit=20)))
    if status in STOP_MESSAGES:
        return Event("info", "jobs", message=STOP_MESSAGES[status])
    return None


@contextmanager
def record_run(store: RunStore, run_id: str, run_dir: str | Path, total_trainings: int, *,
               heartbeat: Heartbeat | None = None,
               shutting_down: Callable[[], bool] = lambda: False) -> Iterator[StoreRecorder]:
    """Record a run in the store while the block runs; yields the subscriber to attach to its EventBus.

    The run beats while the block runs (on `heartbeat`, or on one of its own). When the block ends,
    its final status comes from the exception that left it (core.lifecycle.final_status; asking
    `shutting_down()` then), with an event saying why a stopped or failed run ended; the exception is
    raised again. A store that cannot be written then costs a logged warning, never the final status
    of the caller's run or its exception.
    """
    recorder = StoreRecorder(store, run_id, run_dir, total_trainings)
    beats = heartbeat if heartbeat is not None else Heartbeat(store)
    beats.add(run_id, RunStatus.RUNNING, recorder.flush)
    exc: BaseException | None = None
    try:
        yield recorder
    except BaseException as err:
        exc = err
        raise
    finally:
        status, error = final_status(exc, shutting_down=shutting_down())
        if heartbeat is None:
            beats.stop()
        else:
            beats.discard(run_id)  # before the final status: a later beat must not revive the run
        note = _final_event(status, exc, error)
        if note is not None:
            recorder(note)
        recorder.close()
        _finish(store, run_id, status, error)


def _finish(store: RunStore, run_id: str, status: RunStatus, error: str | None) -> None:
    """finish_run, falling back to a bare status when the full finish cannot be written."""
    try:
        store.finish_run(run_id, status, error=error)
        return
    except RunNotFound:
        log.info("run %s was deleted from the store before it ended %s", run_id, status)
        return
    except StoreError as err:
        log.warning("run %s: its results were not stored (%s); trying to record its status %s alone",
                    run_id, err, status)
    try:
        store.set_status(run_id, status, error)
    except StoreError as err:
        # Nothing more to try: once this process has gone, the store reads the run as interrupted.
        log.warning("run %s: the run store was not updated, its status %s is lost: %s", run_id, status, err)
