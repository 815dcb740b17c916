"""Can this folder really be created and written? Asked before anything is recorded.

Permission bits are not the answer: root is "allowed" to write under /proc and /sys, where mkdir
still fails, and a read-only mount says nothing until a write. So the folder is created (with any
missing parents) and a file is written and removed in it; folders made for the probe are removed
again, so a run refused later for another reason leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from core.errors import OutputError

log = logging.getLogger(__name__)


def probe_folder(folder: str | Path, field: str = "--out") -> None:
    """Raise OutputError (naming `field`) unless `folder` can be created and written; leaves no trace."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(field, f"'{folder}' is a file, not a folder", "give a folder path")
    missing = []
    probe = folder.absolute()
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(field, f"'{folder}' cannot be created: '{probe}' is a file, not a folder",
                          "choose a folder you can write to")
    created: list[Path] = []
    try:
        for path in reversed(missing):
            path.mkdir()
            created.append(path)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".kdlab-probe-")
        try:
            os.write(fd, b"kdlab")
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as err:
        raise OutputError(field, f"'{folder}' cannot be created or written ({err.strerror or err})",
                          "choose a folder you can write to") from None
    finally:
        for path in reversed(created):
            try:
                path.rmdir()
            except OSError as err:  # someone else wrote into it meanwhile: theirs now, keep it
                log.debug("probe folder %s not removed: %s", path, err)
