"""`kdlab.log` in every run folder: what the engine logged while it worked on that run.

The file gets the `core` loggers' records (INFO and up, DEBUG with `kdlab --verbose`) from the
thread that runs the experiment only, so two runs training side by side in one process (a CPU job
and a CUDA job of the dashboard) each keep their own log.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.train import Event

LOG_NAME = "kdlab.log"
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOGGED_EVENTS = ("stage", "start", "done", "failed", "cancelled", "info")  # step and epoch events are too many

log = logging.getLogger("core.run")


class _ThisThread(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


@contextmanager
def run_log(folder: Path) -> Iterator[None]:
    """Append this thread's `core` log records to `folder/kdlab.log` while the block runs."""
    core = logging.getLogger("core")
    if core.getEffectiveLevel() > logging.INFO:
        core.setLevel(logging.INFO)  # INFO reaches the file; the terminal still shows WARNING and up
    handler = logging.FileHandler(Path(folder) / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_ThisThread())
    core.addHandler(handler)
    try:
        yield
    finally:
        core.removeHandler(handler)
        handler.close()


def log_event(event: Event) -> None:
    """EventBus subscriber: the run's milestones (stages, trainings started and done, warnings) as log lines."""
    if event.kind not in LOGGED_EVENTS:
        return
    text = event.message or ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in event.metrics.items())
    # INFO, warnings and failures included: the CLI and the pages report those themselves; the log keeps them.
    log.info("%s %s%s", event.kind, event.source, f": {text}" if text else "")
