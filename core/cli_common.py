"""What every `kdlab` command shares: the error handling group, the repeated options, logging, progress bars.

A KdlabError from any command is printed as `error: <one line>` on stderr with exit status 2 (see
`KdlabGroup`), in this one place.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import click

from core import config as config_mod
from core.errors import KdlabError
from core.folders import probe_folder
from core.lifecycle import one_line
from core.store import DEFAULT_DIR, ENV_VAR, default_data_dir
from core.tables import Column, fixed, mega, millions, text_table

F = TypeVar("F", bound=Callable[..., Any])

STORE_HELP = f"Run store folder (default ${ENV_VAR} or ./{DEFAULT_DIR})."
SET_HELP = "Override a config value, e.g. --set train.epochs=5 --set teachers.0.model=resnet18."
EXIT_ERROR = 2        # bad input, as click's own usage errors
EXIT_CANCELLED = 130  # 128 + SIGINT, as a shell reports Ctrl-C


class KdlabGroup(click.Group):
    """The command group: every KdlabError a command raises becomes one line on stderr and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KdlabError as err:
            click.echo(f"error: {one_line(err)}", err=True)
            ctx.exit(EXIT_ERROR)


# -- options used by several commands ------------------------------------------------------------

def config_source(set_help: str = SET_HELP) -> Callable[[F], F]:
    """The config a command reads: an optional CONFIG_FILE, --preset and repeated --set."""
    def decorate(fn: F) -> F:
        fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=set_help)(fn)
        fn = click.option("--preset", "preset_name", help="A bundled preset (see `kdlab presets`).")(fn)
        return click.argument("config_file", required=False, type=click.Path(dir_okay=False))(fn)
    return decorate


def store_option(help: str = STORE_HELP) -> Callable[[F], F]:
    """--store: the run store's folder."""
    return click.option("--store", "store_dir", type=click.Path(file_okay=False), help=help)


quiet_option = click.option("--quiet", is_flag=True, help="No progress bars.")


def load_config(config_file: str | None, preset_name: str | None, overrides: Iterable[str]) -> config_mod.RunConfig:
    return config_mod.load(config_file, preset_name, list(overrides))


def data_dir_of(store_dir: str | None) -> Path:
    return Path(store_dir) if store_dir else default_data_dir()


def check_store_folder(data_dir: Path) -> None:
    """Refuse a run store folder that cannot be created or written, naming --store (not the --out inside it)."""
    probe_folder(data_dir, "--store")  # creates and writes a probe, then removes what it made


# -- logging -------------------------------------------------------------------------------------

class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is now (click's test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit runs under the handler's lock
        super().emit(record)


class _Formatter(logging.Formatter):
    """`warning: message`, like the CLI's other messages (with the logger's name when verbose)."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord(record.__dict__)
        record.levelname = record.levelname.lower()
        return super().format(record)


def configure_logging(verbose: bool) -> None:
    """Log the `core` packages to stderr: DEBUG with --verbose, else WARNING and above."""
    logger = logging.getLogger("core")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)  # a second invocation in one process (tests) replaces the first's
    level = logging.DEBUG if verbose else logging.WARNING
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(levelname)s: %(message)s"))
    handler.setLevel(level)  # the logger may be lowered for a run's own log file; the terminal keeps this level
    logger.addHandler(handler)
    logger.setLevel(level)


# -- output --------------------------------------------------------------------------------------

class ProgressBars:
    """Event subscriber drawing one tqdm bar per model being trained (on stderr)."""

    def __init__(self, enabled: bool = True) -> None:
        from tqdm import tqdm
        self._tqdm = tqdm
        self.enabled = enabled
        self._bar = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if event.kind == "start":
            self._close()
            total = int(event.metrics.get("total_steps", 0))
            self._bar = self._tqdm(total=total, desc=event.source, unit="step", leave=True,
                                   file=sys.stderr, dynamic_ncols=True)
            self._bar.update(event.step or 0)
        elif self._bar is not None and event.kind in ("step", "epoch") and event.step is not None:
            self._bar.update(event.step - self._bar.n)
            if event.kind == "epoch":
                self._bar.set_postfix(epoch=event.epoch, val_acc=f"{event.metrics['val/acc']:.3f}",
                                      val_loss=f"{event.metrics['val/loss']:.3f}")
        elif event.kind in ("done", "failed", "cancelled"):
            self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_teacher_table(teachers: Iterable[Any]) -> str:
    """A plain-text table of teacher results (TeacherEntry models or dicts)."""
    return text_table(teachers, [
        Column("teacher", "name", left=True),
        Column("seed", "seed"),
        Column("params", "params", millions),
        Column("MFLOPs", "flops", mega),
        Column("test acc", "test_acc", fixed(4)),
        Column("test nll", "test_nll", fixed(4)),
        Column("train s", "train_seconds", fixed(1)),
    ])
