"""Errors a user can act on.

Every `KdlabError` message names the offending field and the fix, in one line, so the CLI can print
it and exit 2 and the dashboard can show it beside the widget without a traceback.
"""

from __future__ import annotations


class KdlabError(Exception):
    """Bad input: the message names the field and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}" if field else problem
        if fix:
            message = f"{message}; {fix}"
        super().__init__(message)

    def __reduce__(self):
        # Rebuilt from its three parts, so it survives a copy or a pickle (a Ray worker's error reaches
        # the driver that way); Exception's default would call __init__ with the message alone.
        return type(self), (self.field, self.problem, self.fix)


class ConfigError(KdlabError):
    """A config value is out of range or inconsistent with the others."""


class DataError(KdlabError):
    """A data set is missing, unreadable or too small for the requested split."""


class ModelError(KdlabError):
    """A model name is unknown, a size knob is unsupported, or a weights file is bad."""


class OutputError(KdlabError):
    """The output directory cannot be written."""


class Cancelled(Exception):
    """Raised inside a worker when its cancellation token is set; not a user error."""
