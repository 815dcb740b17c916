"""OS scheduling priority of background threads, so that training yields the CPU to the UI.

A job's worker thread trains with every core it can get; the dashboard's server threads (and the
browser, on the same machine) then wait behind it for a time slice. Raising the worker's nice value
gives them the CPU first while leaving training the whole machine when the UI is idle.

On Linux a nice value belongs to one thread (`setpriority(PRIO_PROCESS, tid, ...)` with a thread id
changes that thread only), and threads started later by that thread inherit it: the OpenMP team that
torch starts for the worker's first parallel op, and DataLoader worker processes. Elsewhere the call
would renice the whole process (or fail), so it is left alone there.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

BACKGROUND_NICE = 10  # nice 10 weighs ~1/10 of nice 0 in Linux's scheduler: the UI wins a contended core
MAX_NICE = 19


def lower_priority(increment: int = BACKGROUND_NICE) -> bool:
    """Lower the calling thread's OS priority by `increment` nice levels; False (logged) where unsupported.

    Call it first thing in a background thread, before it starts any threads of its own (torch's
    OpenMP team), so they inherit the lower priority. It cannot be undone without privileges: use it
    only in threads that do background work for their whole life.
    """
    name = threading.current_thread().name
    if sys.platform != "linux" or not hasattr(os, "setpriority"):
        # macOS and Windows: PRIO_PROCESS takes a process id there, so a thread id could renice another
        # process. Training then runs at normal priority, which is only slower UI, not wrong results.
        log.info("thread %s keeps its OS priority: per-thread nice values are Linux-only (this is %s)",
                 name, sys.platform)
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        target = min(MAX_NICE, current + increment)
        os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as err:  # e.g. a sandbox that forbids setpriority: the thread still works, at its priority
        log.warning("thread %s keeps its OS priority (setpriority failed: %s); the UI may respond slower "
                    "while it works", name, err)
        return False
    log.debug("thread %s (tid %d) now runs at nice %d", name, tid, target)
    return True


def thread_nice(native_id: int | None = None) -> int | None:
    """The nice value of a thread of this process (default: the calling one); None where unsupported."""
    if sys.platform != "linux" or not hasattr(os, "getpriority"):
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, native_id if native_id is not None else threading.get_native_id())
    except OSError as err:
        log.debug("getpriority failed (%s)", err)
        return None
