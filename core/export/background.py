"""An export in a background thread, for the dashboard until the job queue runs exports itself.

`start_export(...)` returns at once with an `ExportHandle`; pages poll `handle.done`, read the last
progress message and, once finished, `handle.result` or `handle.error` (a one-line message).
The same keyword arguments as `core.export.export_model`; cancel with `handle.cancel()`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import Cancelled, KdlabError
from core.export.export import ExportResult, export_model
from core.lifecycle import one_line
from core.train import CancelToken, Event

log = logging.getLogger(__name__)


@dataclass
class ExportHandle:
    """A running or finished background export."""

    out: Path
    token: CancelToken = field(default_factory=CancelToken)
    events: list[Event] = field(default_factory=list)
    result: ExportResult | None = None
    error: str | None = None                  # one line: a KdlabError's message, or the exception type and text
    cancelled: bool = False
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    @property
    def message(self) -> str:
        """The latest progress message."""
        with self._lock:
            return self.events[-1].message if self.events else "starting"

    @property
    def fraction(self) -> float:
        """Progress in [0, 1] from the stage events' step counts."""
        with self._lock:
            if not self.events:
                return 0.0
            m = self.events[-1].metrics
        return 1.0 if self.done else min(1.0, m.get("step", 0) / max(m.get("steps", 1), 1))

    def cancel(self) -> None:
        self.token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the export ends (or timeout s); True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done

    def _record(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)


def start_export(run: str | Path, out: str | Path, **kwargs: Any) -> ExportHandle:
    """Run `export_model(run, out, **kwargs)` in a daemon thread; the handle reports how it went."""
    handle = ExportHandle(Path(out))

    def work() -> None:
        try:
            handle.result = export_model(run, out, cancel=handle.token, events=handle._record, **kwargs)
        except KdlabError as err:
            handle.error = one_line(err)
        except Cancelled:
            handle.cancelled = True
        except Exception as err:  # noqa: BLE001 - a page must show what went wrong, not lose the thread
            log.exception("export of %s failed", run)
            handle.error = one_line(f"{type(err).__name__}: {err}")

    handle._thread = threading.Thread(target=work, name=f"kdlab-export-{Path(out).name}", daemon=True)
    handle._thread.start()
    return handle
