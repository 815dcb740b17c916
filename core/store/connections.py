"""Connections to one SQLite file: one per thread, reopened when the file is moved, deleted or replaced.

A long-lived process (the dashboard's job manager) keeps its store open for days. If its
`kdlab.db` is moved aside or replaced meanwhile, cached connections would go on reading the old
file (or, for a new thread, an empty one: "no such table: runs"). So each time a connection is
taken the file's (st_dev, st_ino) is compared with the one that was opened (one stat call), and on
a change every connection of every thread is closed before a new one is opened on the new file.

Closing them all first matters: SQLite keeps `-wal`/`-shm` beside the path, and the last
connection to a file checkpoints into it and removes those by name; a connection to a new file at
the same path must never share them with one still open on the old file. A `Gate` lets any number
of threads use their connections at once and holds them off while one thread swaps the file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

Identity = tuple[int, int]  # (st_dev, st_ino)

# Every open pool in this process, so a recovery can release the file before renaming it.
_POOLS: "weakref.WeakSet[Connections]" = weakref.WeakSet()
_POOLS_LOCK = threading.Lock()
_SWAP = threading.RLock()  # held while a pool swaps its file (reentrant: a swap may release other pools)


def file_identity(path: Path) -> Identity | None:
    """(st_dev, st_ino) of a file, None when it is not there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Gate:
    """Shared use by many threads, or exclusive use by one (while the file is swapped).

    Shared entries nest and do not wait for a waiting exclusive one (so a thread already inside
    never deadlocks on its own nested call); the exclusive holder may also enter shared.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._users = 0
        self._owner: int | None = None

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Use the file alongside other threads."""
        me = threading.get_ident()
        with self._cv:
            while self._owner is not None and self._owner != me:
                self._cv.wait()
            self._users += 1
        try:
            yield
        finally:
            with self._cv:
                self._users -= 1
                self._cv.notify_all()

    @contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[None]:
        """Hold every other thread off the file (never entered while this thread is inside `shared`).

        TimeoutError after `timeout` seconds of waiting, if given.
        """
        me = threading.get_ident()
        with self._cv:
            if not self._cv.wait_for(lambda: self._owner is None and not self._users, timeout):
                raise TimeoutError(f"the gate stayed in use for {timeout} s")
            self._owner = me
        try:
            yield
        finally:
            with self._cv:
                self._owner = None
                self._cv.notify_all()


class Connections:
    """Per-thread connections to `path`, all dropped together when the file under `path` changes."""

    def __init__(self, path: Path, connect: Callable[[], sqlite3.Connection]) -> None:
        self.path = path
        self._connect = connect
        self.gate = Gate()
        self.identity: Identity | None = None   # the file the connections are open on
        self.previous: Identity | None = None   # the last file they were open on, once dropped
        self.stale = True                       # True until a successful open sets `identity`
        self._generation = 0
        self._local = threading.local()
        self._conns: dict[int, tuple[threading.Thread, sqlite3.Connection]] = {}
        self._lock = threading.Lock()
        with _POOLS_LOCK:
            _POOLS.add(self)

    @property
    def depth(self) -> int:
        """How deep this thread is inside `gate.shared()` of this pool."""
        return getattr(self._local, "depth", 0)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Shared use, counting this thread's depth (the file is checked only at depth 0)."""
        with self.gate.shared():
            self._local.depth = self.depth + 1
            try:
                yield
            finally:
                self._local.depth -= 1

    def changed(self) -> bool:
        """Whether the file at `path` is no longer the one the connections were opened on."""
        if self.stale:
            return True
        try:
            return file_identity(self.path) != self.identity
        except OSError as err:  # e.g. a folder that became unreadable: the query itself will say so
            log.debug("cannot stat '%s' (%s); the connections are kept", self.path, err)
            return False

    def moved(self) -> bool:
        """Whether the file the connections are open on is no longer at `path` (moved, deleted, replaced)."""
        try:
            return self.identity is not None and file_identity(self.path) != self.identity
        except OSError as err:
            log.debug("cannot stat '%s' (%s)", self.path, err)
            return False

    def get(self) -> sqlite3.Connection:
        """This thread's connection (a new one after the file changed)."""
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == self._generation:
            return cached[1]
        conn = self._connect()
        with self._lock:
            # Close the connections of threads that have ended (a dashboard starts a thread per rerun).
            for key, (thread, old) in list(self._conns.items()):
                if not thread.is_alive():
                    _close(old, self.path)
                    del self._conns[key]
            self._conns[id(conn)] = (threading.current_thread(), conn)
        self._local.conn = (self._generation, conn)
        return conn

    def fold_log(self) -> None:
        """Checkpoint the write-ahead log into the file the connections are open on, wherever it went.

        SQLite does not checkpoint on close once the file has been moved, and leaves its `-wal`
        at the old name, where opening a new file there would delete it: the moved file would lose
        its latest commits. An explicit checkpoint writes them into it first.
        """
        with self._lock:
            conns = [conn for _, conn in self._conns.values()]
        if not conns:
            return
        try:
            conns[0].execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as err:  # e.g. the old file is damaged: there is nothing sound to fold in
            log.warning("the write-ahead log of the moved store '%s' was not folded into it: %s", self.path, err)

    def drop_all(self) -> None:
        """Close every thread's connection (call with `gate` held exclusively, or when nobody uses them)."""
        with self._lock:
            for _, conn in self._conns.values():
                _close(conn, self.path)
            self._conns.clear()
        self._generation += 1  # a thread's cached connection is now stale: it takes a new one
        if self.identity is not None:
            self.previous = self.identity
        self.identity = None
        self.stale = True

    def opened(self) -> None:
        """Remember the file the connections are now open on."""
        self.identity = file_identity(self.path)
        self.previous = None
        self.stale = False


def _close(conn: sqlite3.Connection, path: Path) -> None:
    try:
        conn.close()
    except sqlite3.Error as err:
        log.debug("closing a connection to '%s' failed (%s); it is dropped anyway", path, err)


def swapping() -> threading.RLock:
    """The lock a pool takes before swapping its file, so two pools on one path never swap at once."""
    return _SWAP


@dataclass
class Released:
    """What `release` did: pools closed, and pools left open because they stayed busy."""

    closed: int = 0
    busy: int = 0


def release(path: Path, *, moved_only: bool = False, keep: Connections | None = None,
            timeout: float = 10.0) -> Released:
    """Close the connections this process holds on `path` (every pool's, or only those whose file moved).

    Before a file is renamed (its connections would remove the -wal/-shm by name), and before a new
    file is opened at a path where others still hold the old one (they would share its -shm). A
    pool busy for `timeout` seconds is left as it is, with a warning (it reopens on its next use).
    """
    path = Path(path).absolute()
    with _POOLS_LOCK:
        pools = [p for p in _POOLS if p.path == path and p is not keep]
    done = Released()
    for pool in pools:
        if moved_only and not pool.moved():
            continue  # on the file now at the path, or holding none: nothing to release
        try:
            with pool.gate.exclusive(timeout):
                if pool.moved():
                    pool.fold_log()
                pool.drop_all()
            done.closed += 1
        except TimeoutError:
            done.busy += 1
            log.warning("connections to '%s' in use for %.0f s were not closed; they reopen on their next use",
                        path, timeout)
    return done


def set_aside_orphans(path: Path) -> list[Path]:
    """Rename a `-wal`/`-shm` left at `path` by a file that is gone to `<name>.orphaned-<time>-wal`/`-shm`.

    A new file at `path` must not start with another file's log (SQLite would delete a log it
    finds beside an empty file) nor share its index; renamed, nothing is lost. Returns the new names.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if not side.exists() or path.exists():  # a file is there again: these are its own
            continue
        target = path.with_name(f"{path.name}.orphaned-{stamp}{suffix}")
        try:
            os.rename(side, target)
        except OSError as err:
            log.warning("'%s' (left by the moved store) was not renamed aside: %s", side, err)
            continue
        moved.append(target)
    if moved:
        log.warning("renamed what the moved or deleted store left at '%s' aside: %s", path,
                    ", ".join(p.name for p in moved))
    return moved
