"""The Ray Tune trainable: one kdlab trial in a Ray worker, reporting to the driver.

A worker restores the teachers and their logit cache from the sweep folder (shared storage on a
cluster) once per process, and trains a trial's students exactly as the local executor does
(core.search.trial._train). It never opens the run store: what the store records comes back in its
reports, and the driver's callback (core.search.ray_executor) writes it.

    report per epoch of the first KD student:  {val_acc, epoch, kdlab_events}   (Tune's scheduler prunes on it)
    report at the end:                          {<objectives>, kdlab_final, kdlab_row, kdlab_results, ...}
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.lifecycle import RunStatus
from core.search.spec import SearchSpec
from core.search.trial import PRUNE_SOURCE, SweepContext, TrialOutcome, _LinkedToken, _train, trial_folder
from core.sweep_grid import point_config, point_label
from core.train import CancelToken, Event, EventBus

log = logging.getLogger(__name__)

# Keys of a report that are kdlab's, not metrics (the driver's callback reads them).
EVENTS, FINAL, ROW, RESULTS, VALUES, EPOCHS, STD = ("kdlab_events", "kdlab_final", "kdlab_row", "kdlab_results",
                                                   "kdlab_values", "kdlab_epochs", "kdlab_val_acc_std")
RUN_KEY, TRIAL_KEY = "kdlab_run_id", "kdlab_trial"  # put in a trial's config by the driver's searcher
MAX_EVENTS_PER_REPORT = 2000  # a report carries the events since the last one; steps are ~10 per epoch here

_CONTEXTS: dict[str, SweepContext] = {}  # sweep folder -> its context, once per worker process


@dataclass
class RayPayload:
    """What every trial of a Ray sweep shares, put in Ray's object store once (tune.with_parameters).

    The teachers' weights and logit cache are not in it: they are files of the sweep folder, which
    workers restore from (a few MB for digits; see the README's cluster section for CIFAR sizes).
    """

    base: dict[str, Any]          # the base config
    spec: dict[str, Any]          # the SearchSpec
    out: str                      # the sweep folder (on storage every node sees)
    sweep_id: str
    study_name: str
    source: str
    threads: int                  # torch threads per trial (its CPU share)
    shared: dict[str, Any]        # the ensembles' entries, the teachers' costs, the schemes to fit


class _Relay:
    """EventBus subscriber: buffers the trial's events for its next report; epochs of the first KD
    student go to Tune (its scheduler may stop the trial after any of them)."""

    def __init__(self, report) -> None:
        self.report = report
        self.pending: list[dict[str, Any]] = []
        self.epochs = 0
        self.last_step: int | None = None
        self.pruned_at: int | None = None  # Tune stops a pruned trial's worker: _train never sees it

    def __call__(self, event: Event) -> None:
        self.pending.append(event.to_dict())
        del self.pending[:-MAX_EVENTS_PER_REPORT]
        if event.kind == "epoch" and event.source.startswith("student/"):
            self.epochs += 1
        if event.kind == "epoch" and event.source == PRUNE_SOURCE and event.epoch is not None:
            value = (event.metrics or {}).get("val/acc")
            if value is not None:
                self.last_step = int(event.epoch)
                self.report({"val_acc": float(value), "epoch": int(event.epoch), EPOCHS: self.epochs,
                             EVENTS: self.take()})

    def take(self) -> list[dict[str, Any]]:
        out, self.pending = self.pending, []
        return out


def _context(payload: RayPayload) -> SweepContext:
    """This worker's context for the sweep: teachers restored from the folder once, then reused."""
    if payload.out in _CONTEXTS:
        return _CONTEXTS[payload.out]
    from core import config as config_mod
    from core.prepare import prepare
    from core.results import EnsembleEntry
    from core.search.engine import build_context
    from core.search.workers import FolderLock

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(payload.threads)
    spec = SearchSpec.model_validate(payload.spec)
    out = Path(payload.out)
    prep = prepare(config_mod.validate(payload.base), out)
    shared = {**payload.shared, "ensembles": [EnsembleEntry(**e) for e in payload.shared["ensembles"]]}
    cancel = CancelToken()
    # No store in a worker (None): the driver records the trial from its reports.
    ctx = build_context(prep, spec, out, payload.sweep_id, None, None, payload.source, EventBus(), cancel,
                        lambda: False, study_name=payload.study_name, shared=shared)
    ctx.folder_lock = FolderLock  # two trials of one point, or sharing a scratch twin, may run at once
    _CONTEXTS[payload.out] = ctx
    return ctx


def kdlab_trial(config: dict[str, Any], payload: RayPayload) -> None:
    """Ray Tune function trainable: train the trial whose point is in `config`, report to the driver."""
    from ray import tune

    ctx = _context(payload)
    spec = ctx.spec
    point = {d.field: config[d.field] for d in spec.dimensions}
    cfg = point_config(ctx.prep.cfg, point, spec.seeds)
    folder = trial_folder(ctx, cfg)
    relay = _Relay(tune.report)
    bus = EventBus(relay)
    bus.emit(Event("stage", "trial", message=f"trial {config.get(TRIAL_KEY)}: {point_label(point)} "
                   f"(Ray worker, process {os.getpid()})", metrics={"trial": config.get(TRIAL_KEY, -1),
                                                                     "pid": os.getpid()}))
    outcome = TrialOutcome(str(config.get(RUN_KEY, "")), RunStatus.RUNNING)
    _train(ctx, cfg, point, folder, bus, _LinkedToken(ctx.cancel), relay, outcome)
    values = dict(zip(spec.objectives, outcome.values or []))
    results = (folder / "results.json").read_text()
    # Nested dicts in a report are flattened by Tune ('a/b' keys): the row travels as JSON text.
    tune.report({**values, FINAL: True, ROW: json.dumps(outcome.row.to_json()), RESULTS: results, VALUES: outcome.values,
                 STD: outcome.val_acc_std, EPOCHS: relay.epochs, EVENTS: relay.take()})
