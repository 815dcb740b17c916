"""Events a training run publishes, and the token that cancels it.

Workers never talk to a UI directly: they publish events to subscribers (a JSONL writer, a progress
bar, the run store), and check a cancellation token once per step.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from core.errors import Cancelled

log = logging.getLogger(__name__)

EVENT_KINDS = ("start", "step", "epoch", "done", "failed", "cancelled", "stage", "info")


@dataclass
class Event:
    """One thing that happened: `kind` is one of EVENT_KINDS; metrics use `split/metric` names."""

    kind: str
    source: str = ""          # which model or stage, e.g. "teacher/resnet10t/s0"
    step: int | None = None   # optimiser steps so far (global over epochs)
    epoch: int | None = None  # 1-based epoch just finished, for epoch events
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    time: float = field(default_factory=time.time)  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers; a failing subscriber never stops training."""

    def __init__(self, *subscribers: Subscriber) -> None:
        self._subscribers: list[Subscriber] = list(subscribers)
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(fn)

    def emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - a broken display must not kill a training run
                log.warning("event subscriber %r failed on a %s event from %s; training goes on",
                            fn, event.kind, event.source, exc_info=True)

    def __call__(self, kind: str, **kwargs: Any) -> None:
        self.emit(Event(kind=kind, **kwargs))


class CancelToken:
    """Set from any thread; the training loop raises `Cancelled` at its next step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.shutdown = False  # set with the cancel when the app shuts down: the run is interrupted, not cancelled

    def cancel(self, *, shutdown: bool = False) -> None:
        """Stop at the next step; `shutdown`: nobody asked, the process is going away (the run stays resumable)."""
        self.shutdown = self.shutdown or shutdown
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")
