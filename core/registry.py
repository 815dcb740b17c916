"""Name -> object registries filled by decorators (data sets, ensemble combiners, KD losses).

Adding a scheme is one decorated function; an unknown name gives a KdlabError naming the config field
and listing the choices.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from core.errors import KdlabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Ordered name -> entry mapping; the first registered name is the default."""

    def __init__(self, what: str, field: str, error: type[KdlabError]) -> None:
        self.what = what      # e.g. "data set", used in messages
        self.field = field    # the config field that names an entry, e.g. "data.name"
        self.error = error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, identity: object | None = None) -> None:
        """Register `entry` as `name`; registering a different object under a taken name is a bug."""
        if name in self._entries and self._identity(self._entries[name]) is not (identity or entry):
            raise ValueError(f"{self.what} '{name}' is registered twice")
        self._entries[name] = entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@registry.decorator("name")` registers the decorated object."""
        def deco(fn: T) -> T:
            self.add(name, fn)
            return fn
        return deco

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def get(self, name: str) -> T:
        """The entry called `name`, or the registry's error listing the choices."""
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(self.field, f"unknown {self.what} '{name}'",
                             f"pick one of {', '.join(self._entries)}") from None

    @staticmethod
    def _identity(entry: object) -> object:
        return getattr(entry, "fn", entry)
