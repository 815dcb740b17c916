"""Writing a live run into the store: an EventBus subscriber (events, progress, ETA) and a heartbeat."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from core.store.db import RunNotFound, RunStore, StoreError

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
    trainings over expected trainings, plus step / total_steps within the current one.
    """

    def __init__(self, store: RunStore, run_id: str, run_dir: str | Path, total_trainings: int, *,
                 flush_every: float = 0.5, max_batch: int = 256,
                 clock: Callable[[], float] = time.time) -> None:
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
        self._current: str | None = None
        self._step = 0
        self._total_steps = 0
        self._trained = False            # a real optimiser step seen since the ETA baseline
        self._base_time = clock()        # ETA baseline: (time, progress) once restored work is skipped
        self._base_progress = 0.0
        self._sync_results = False
        self._gone = False               # the run was deleted from the store: stop writing

    # -- progress -------------------------------------------------------------------------------

    @property
    def progress(self) -> float:
        frac = min(self._step / self._total_steps, 1.0) if self._current and self._total_steps else 0.0
        # Below 1 until the run is finished: the comparison stage still runs after the last training.
        return min((self._finished + frac) / self.total, 0.99)

    @property
    def eta(self) -> float | None:
        """Seconds left, from the rate of progress since the baseline; None while unknown."""
        p = self.progress
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
            self._current = source
            self._step = int(event.step or 0)
            self._total_steps = int(event.metrics.get("total_steps", 0) or 0)
            if self._step and not self._trained:
                self._rebase()  # resumed from a checkpoint: restored steps took no time
        elif event.kind in ("step", "epoch") and source == self._current:
            self._step = int(event.step or self._step)
            self._trained = True
        elif event.kind == "done":
            was_trained = self._trained
            self._finished += 1
            self._current, self._step, self._total_steps = None, 0, 0
            if not was_trained:
                self._rebase()  # a training restored whole from its checkpoint

    def _rebase(self) -> None:
        self._base_time = self.clock()
        self._base_progress = self.progress

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
            self._gone, self._pending = True, []
        except StoreError:
            self.errors += 1  # keep the batch; the next flush tries again
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

    def add(self, run_id: str, status: str = "running", flush: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._runs[run_id] = (status, flush)

    def discard(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def beat(self) -> None:
        """One heartbeat now."""
        with self._lock:
            runs = dict(self._runs)
        for _, flush in runs.values():
            if flush is not None:
                try:
                    flush()
                except Exception:  # noqa: BLE001 - the heartbeat must outlive any one run
                    pass
        try:
            self.store.beat({run_id: status for run_id, (status, _) in runs.items()})
        except StoreError:
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
