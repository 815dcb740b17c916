"""A run's lifecycle without the store: its status type, which statuses resume, and how a run ends.

Light on purpose (no sqlite, no torch), so the pipeline, the job manager, the CLI and the store all
share one definition of what each status means and of how an exception becomes a final status.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from core.errors import Cancelled, KdlabError


class RunStatus(str, enum.Enum):
    """A run's status; a str, so it equals its value ('done' == RunStatus.DONE) and goes into SQLite as is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    PRUNED = "pruned"        # a search trial its pruner stopped early: ended, and not to be resumed

    # Groups, set below the class (inside the body they would become members).
    ACTIVE: ClassVar[tuple["RunStatus", ...]]      # owned by a live process: queued or running
    FINISHED: ClassVar[tuple["RunStatus", ...]]    # an attempt has ended
    RESUMABLE: ClassVar[tuple["RunStatus", ...]]   # may be queued again in its own folder

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        # f"{status}" must print 'done', not 'RunStatus.DONE', on every Python version.
        return format(self.value, spec)


RunStatus.ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)
RunStatus.FINISHED = (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED, RunStatus.PRUNED)
RunStatus.RESUMABLE = (RunStatus.INTERRUPTED, RunStatus.FAILED, RunStatus.CANCELLED)

# What a stopped run says about why it stopped (an info event, a sweep's stage).
STOP_MESSAGES = {RunStatus.CANCELLED: "cancelled by user", RunStatus.INTERRUPTED: "stopped: the app shut down"}


class Pruned(Exception):
    """A search trial was stopped by its pruner (a decision, not an error): it ends as `pruned`."""


class NotResumable(KdlabError):
    """A run cannot be queued again: it is still active, or it is done."""


def check_resumable(run_id: str, status: str) -> None:
    """Raise NotResumable unless a run with this status may be resumed (interrupted, failed, cancelled)."""
    if status in RunStatus.RESUMABLE:
        return
    what = f"still {status}" if status in RunStatus.ACTIVE else str(status)
    if status == RunStatus.PRUNED:
        raise NotResumable(f"run {run_id}", "cannot be resumed: its search pruned it (hopeless at its epoch)",
                           "train its config again as a new run, e.g. with more seeds")
    raise NotResumable(f"run {run_id}", f"cannot be resumed: it is {what}",
                       "resume only interrupted, failed or cancelled runs")


def one_line(message: object) -> str:
    """A message (or an exception's) on one line: a run's error column and the CLI print one line."""
    return " ".join(str(message).splitlines()).strip()


def final_status(exc: BaseException | None, *, shutting_down: bool) -> tuple[RunStatus, str | None]:
    """The final status of a run that ended with `exc` (None: it finished), and its one-line error.

    A search trial's Pruned is `pruned`. Cancelled and Ctrl-C are `cancelled`, or `interrupted` (resumable, nobody asked) while the app
    shuts down; a KdlabError is `failed` with its message; any other Exception is `failed` with its
    type. A BaseException that is neither (SystemExit) means the process is going away: `interrupted`.
    """
    if exc is None:
        return RunStatus.DONE, None
    if isinstance(exc, Pruned):
        return RunStatus.PRUNED, None
    if isinstance(exc, (Cancelled, KeyboardInterrupt)):
        return (RunStatus.INTERRUPTED if shutting_down else RunStatus.CANCELLED), None
    if isinstance(exc, KdlabError):
        return RunStatus.FAILED, one_line(exc)
    if isinstance(exc, Exception):
        return RunStatus.FAILED, one_line(f"{type(exc).__name__}: {exc}")
    return RunStatus.INTERRUPTED, None
