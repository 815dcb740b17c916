"""Moving a damaged `kdlab.db` aside: renamed with its `-wal` and `-shm` files, never deleted."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from core.store.connections import release, swapping
from core.store.schema import StoreError

log = logging.getLogger(__name__)

SIDE_FILES = ("-wal", "-shm")  # SQLite's write-ahead log and its index, named after the database file


def damaged_name(db_path: Path, when: float | None = None) -> Path:
    """`kdlab.db.damaged-<YYYYmmdd-HHMMSS>` beside the file (with -2, -3, ... if that name is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    base = db_path.with_name(f"{db_path.name}.damaged-{stamp}")
    target, n = base, 2
    while any(Path(f"{target}{suffix}").exists() for suffix in ("", *SIDE_FILES)):
        target, n = base.with_name(f"{base.name}-{n}"), n + 1
    return target


def move_aside(db_path: Path) -> Path:
    """Rename a store file and its -wal/-shm to `kdlab.db.damaged-<time>`; returns the new path. Nothing is deleted."""
    db_path = Path(db_path).absolute()
    if not db_path.is_file():
        raise StoreError("store", f"there is no file '{db_path}' to move aside", "")
    # This process's connections go first: the last one to close removes -wal/-shm by name, which
    # would then be the new store's.
    with swapping():
        if release(db_path).busy:
            raise StoreError("store", f"'{db_path}' is in use by a call of this process that does not end",
                             "try again in a moment")
        return _rename_all(db_path)


def _rename_all(db_path: Path) -> Path:
    target = damaged_name(db_path)
    # The side files before the database: in between, a process that opens the store finds the old file
    # without its log. The other order would let it open a new, empty file, which deletes the old log.
    for suffix in (*SIDE_FILES, ""):
        source = Path(f"{db_path}{suffix}")
        if suffix and not source.exists():
            continue
        try:
            os.rename(source, f"{target}{suffix}")
        except OSError as err:
            raise StoreError("--store", f"cannot rename '{source}' to '{target}{suffix}' ({err.strerror or err})",
                             "check that the run store folder is writable") from None
    log.warning("moved the run store '%s' aside to '%s' (nothing was deleted)", db_path, target)
    return target
