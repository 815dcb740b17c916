"""The `processes` executor: a search's trials in K worker processes on this machine.

The parent has trained the teachers and filled the logit cache; each worker restores them from the
sweep folder's checkpoints and cache files (nothing is recomputed), runs torch with
`cores // K` threads, and runs the same ask-train-tell loop as a local search on the shared study,
recording its trials in the same run store. Asking, claiming a run row and telling happen under a
file lock on the sweep folder, so K workers never overshoot the budget or pick one grid point twice.

Cancel reaches every worker as SIGTERM (SIGUSR1 when the app shuts down: interrupted, resumable).
A worker that dies (a kill, an out-of-memory) leaves its trial's run row to the store's reaper,
which marks it interrupted; a live worker, or the one the parent starts in its place, retries it once
with the same values from its students' checkpoints.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from core.errors import Cancelled, KdlabError
from core.search.spec import SearchSpec
from core.search.trial import SweepContext
from core.train import CancelToken, Event

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5                       # how often the parent looks at its workers
EXIT_CANCELLED, EXIT_INTERRUPTED = 3, 4  # a worker's exit status when it stopped as it was asked


class FolderLock:
    """An exclusive lock shared by the processes of one machine (flock on a file in the sweep folder).

    Re-entered once per ask and once per tell, so it is a class, not a one-shot generator.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def __enter__(self) -> "FolderLock":
        self._handle = open(self.path, "a")
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def threads_per_worker(workers: int) -> int:
    """torch threads for each of `workers` processes: the machine's cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // workers)


def run_in_processes(ctx: SweepContext, study: optuna.Study) -> None:
    """Run the rest of `ctx`'s budget in `ctx.spec.workers` processes; returns when they have all ended.

    Raises Cancelled when the search's token was cancelled, KdlabError when workers failed.
    """
    spec = ctx.spec
    mp = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads or sqlite handles
    args = dict(base=ctx.prep.cfg.to_dict(), spec=spec.model_dump(mode="json"), out=str(ctx.out),
                data_dir=str(ctx.store.data_dir), sweep_id=ctx.sweep_id, study=study.study_name,
                storage=ctx.store_url, threads=threads_per_worker(spec.workers), source=ctx.source,
                shared=shared_with_workers(ctx))
    logs = ctx.out / "workers"
    logs.mkdir(exist_ok=True)

    def start(index: int) -> Any:
        proc = mp.Process(target=worker_main, kwargs={**args, "index": index, "log_file": str(logs / f"{index}.log")},
                          name=f"kdlab-worker-{index}", daemon=True)
        proc.start()
        return proc

    procs = {i: start(i) for i in range(spec.workers)}
    ctx.events.emit(Event("stage", "sweep", message=f"{spec.workers} worker process(es), {args['threads']} torch "
                          "thread(s) each", metrics={"workers": spec.workers}))
    restarts, signalled, failed = spec.workers, False, []
    while procs:
        if ctx.cancel.cancelled and not signalled:
            stop = signal.SIGUSR1 if ctx.cancel.shutdown else signal.SIGTERM
            for proc in procs.values():
                _signal(proc, stop)
            signalled = True
        for index, proc in list(procs.items()):
            if proc.is_alive():
                continue
            del procs[index]
            code = proc.exitcode
            if code == 0 or signalled:
                continue
            if code in (EXIT_CANCELLED, EXIT_INTERRUPTED):
                continue
            if restarts > 0:  # killed or crashed: its trial is retried by the worker started in its place
                restarts -= 1
                log.warning("worker %d ended with exit status %s; starting another in its place (see %s)", index,
                            code, logs / f"{index}.log")
                ctx.events.emit(Event("info", "sweep", message=f"worker {index} ended ({code}); its trial is retried"))
                procs[index] = start(index)
            else:
                failed.append((index, code))
        _report(ctx)
        time.sleep(POLL_SECONDS)
    if ctx.cancel.cancelled:
        raise Cancelled("cancelled")
    if failed:
        raise KdlabError("--executor", "worker processes failed: " + ", ".join(f"{i} (exit {c})" for i, c in failed),
                         f"see their logs in {logs}, or run with --executor local")


def shared_with_workers(ctx: SweepContext) -> dict[str, Any]:
    """What the parent measured once and every worker reuses (small, picklable: entries and costs).

    The fitted combiners themselves are refitted in each worker, but only the schemes its trials can
    learn from: the base config's, the values an `ensemble.scheme` dimension takes, and the fallback.
    """
    from core.search.trial import FALLBACK_SCHEME

    schemes = {ctx.prep.cfg.ensemble.scheme, FALLBACK_SCHEME}
    for dim in ctx.spec.dimensions:
        if dim.field == "ensemble.scheme":
            schemes |= set(dim.choices or ())
    return {"ensembles": [e.model_dump() for e in ctx.ensembles], "costs": ctx.costs, "schemes": sorted(schemes)}


def _signal(proc: Any, sig: int) -> None:
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        log.debug("worker %s had already ended", proc.pid)


def _report(ctx: SweepContext) -> None:
    """The parent's view of the search for its listeners (the CLI, the job manager): trials done."""
    from core.search.budget import spent, trial_statuses

    now = time.time()
    if now - getattr(ctx, "_last_report", 0.0) < 2.0:
        return
    ctx._last_report = now  # type: ignore[attr-defined]
    study = optuna.load_study(study_name=ctx.study_name, storage=ctx.store_url)
    done = spent(study, trial_statuses(ctx))
    ctx.events.emit(Event("stage", "sweep", message=f"{done}/{ctx.spec.trials} trial(s) done",
                          metrics={"done": done, "trials": ctx.spec.trials}))


def worker_main(*, base: dict[str, Any], spec: dict[str, Any], out: str, data_dir: str, sweep_id: str, study: str,
                storage: str, threads: int, source: str, shared: dict[str, Any], index: int, log_file: str) -> None:
    """One worker process: restore the teachers, then ask-train-tell on the shared study until the budget is spent."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    signal.signal(signal.SIGUSR1, lambda *_: cancel.cancel(shutdown=True))
    try:
        _work(base, SearchSpec.model_validate(spec), Path(out), data_dir, sweep_id, study, storage, threads, source,
              shared, index, cancel)
    except Cancelled:
        sys.exit(EXIT_INTERRUPTED if cancel.shutdown else EXIT_CANCELLED)
    except KdlabError as err:
        log.error("worker %d: %s", index, err)
        sys.exit(2)


def _work(base: dict[str, Any], spec: SearchSpec, out: Path, data_dir: str, sweep_id: str, study_name: str,
          storage: str, threads: int, source: str, shared: dict[str, Any], index: int, cancel: CancelToken) -> None:
    import torch

    from core import config as config_mod
    from core.pipeline import JsonlWriter
    from core.prepare import prepare
    from core.results import EnsembleEntry
    from core.search.engine import build_context, trial_loop
    from core.search.study import make_pruner, make_sampler, sampler_seed
    from core.store import Heartbeat, RunStore
    from core.train import EventBus

    torch.set_num_threads(threads)
    cfg = config_mod.validate(base)
    # A stream of its own per worker (and per resume): with one seed, two workers would ask for the same point.
    trials_so_far = len(optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False))
    sampler = make_sampler(spec, sampler_seed(spec, worker=index + 1, resumed_at=trials_so_far))
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=make_pruner(spec))
    store = RunStore(data_dir)
    beats = Heartbeat(store)
    writer = JsonlWriter(out / "workers" / f"{index}.events.jsonl")
    events = EventBus(writer)
    try:
        prep = prepare(cfg, out)
        ctx = build_context(prep, spec, out, sweep_id, store, beats, source, events, cancel, lambda: cancel.shutdown,
                            study_name=study_name,
                            shared={**shared, "ensembles": [EnsembleEntry(**e) for e in shared["ensembles"]]})
        ctx.folder_lock = FolderLock  # other workers may train the same point or scratch twin at the same time
        trial_loop(ctx, study, lock=FolderLock(out / ".trials.lock"))
    finally:
        writer.close()
        beats.stop()
        store.close()
