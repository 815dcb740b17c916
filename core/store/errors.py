"""The run store's errors, and the one-line fixes they name (`kdlab store recover`, `kdlab runs reindex`)."""

from __future__ import annotations

from pathlib import Path

from core.errors import KdlabError

DB_NAME = "kdlab.db"


class StoreError(KdlabError):
    """The run store cannot be opened or written, or a run in it is missing or damaged."""


class StoreDamaged(StoreError):
    """The store's file is damaged or not a kdlab run database; `kdlab store recover` moves it aside."""


class NothingToRecover(StoreError):
    """`recover_store` was asked to move aside a store file that is not damaged."""


class RunNotFound(StoreError):
    """No run with this id in the store."""


def recover_hint(data_dir: Path) -> str:
    """The fix for a damaged store file, naming the command that applies it."""
    return (f"run `kdlab store recover --store '{data_dir}'` to move it aside (nothing is deleted), start an "
            f"empty store and bring back the runs whose folders are in '{data_dir}'")


def new_store_notice(data_dir: Path, why: str) -> str:
    """What a page says after a new, empty store replaced a file that held runs."""
    return (f"{DB_NAME} {why}: a new store was started; `kdlab runs reindex --store '{data_dir}'` brings back "
            f"the runs whose folders are in '{data_dir}'")
