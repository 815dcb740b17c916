"""Trials per minute of a student search under each executor, on this machine.

    python benchmarks/executors.py [--preset digits-demo] [--workers 2] [--rounds 1] [--quick] [--no-ray]

The same 12-point grid (distill.temperature 1,2,4 x distill.alpha 0.5,0.9 x student.lr 0.01,0.02,
one student seed each) is searched under `local` (one trial at a time, torch with every core's
thread), `processes --workers K` (K trials at once, cores // K threads each) and `ray --workers K`
(a local Ray started for the sweep, K Tune trials at once, cores // K CPUs each), in one run, on the
same machine state. A grid, not a sampler: every executor trains exactly the same 12 points.

The teachers are trained once, into a folder of their own; each executor's sweep starts from a copy
of its teachers/ and cache/, so what is timed is the trial phase: the workers' start-up (a spawned
interpreter, imports, restoring the teachers; for ray also starting Ray itself) is inside each
figure, and is also printed on its own (the seconds until the first trial row appears). Prints
trials per minute of each and the ratios to local, against the goals (processes >= 1.3x, ray >= 1.2x). Trials per minute depend on what else the
machine runs: run it on a quiet machine, and compare the two figures of one run, not across runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from core import config  # noqa: E402
from core.search.engine import run_search  # noqa: E402
from core.search.space import parse_dimension  # noqa: E402
from core.search.spec import make_spec  # noqa: E402
from core.store import RunStore  # noqa: E402

GOALS = {"processes": 1.3, "ray": 1.2}  # trials per minute, against local
SPACE = ["distill.temperature=1,2,4", "distill.alpha=0.5,0.9", "student.lr=0.01,0.02"]
QUICK_SPACE = ["distill.temperature=1,4", "student.lr=0.01,0.02"]


def _first_trial_after(store: RunStore, out: Path, started: float, box: dict) -> None:
    """Seconds from the start until the sweep's first trial row exists (the executor's start-up)."""
    while "first" not in box and not box.get("stop"):
        sweep = store.find_sweep_by_dir(out)
        if sweep is not None and store.trials(sweep.id):
            box["first"] = time.perf_counter() - started
        time.sleep(0.1)


def search(base, space: list[str], root: Path, teachers: Path, executor: str, workers: int) -> tuple[float, float, int]:
    """(wall seconds, start-up seconds, finished trials) of the grid under one executor."""
    out = root / f"sweep-{executor}"
    out.mkdir(parents=True)
    for part in ("teachers", "cache"):  # the same trained teachers: only the trials are timed
        shutil.copytree(teachers / part, out / part)
    spec = make_spec(base, search="grid", space=[parse_dimension(s) for s in space], seeds=1,
                     executor=executor, workers=workers if executor != "local" else None)
    with RunStore(root / f"store-{executor}") as store:
        box: dict = {}
        started = time.perf_counter()
        watcher = threading.Thread(target=_first_trial_after, args=(store, out, started, box), daemon=True)
        watcher.start()
        result = run_search(base, spec, out, store=store)
        seconds = time.perf_counter() - started
        box["stop"] = True
    return seconds, box.get("first", float("nan")), len(result.rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat both executors, alternating")
    parser.add_argument("--quick", action="store_true", help="4 points, 2 student epochs: a smoke check")
    parser.add_argument("--no-ray", action="store_true", help="leave the ray executor out")
    args = parser.parse_args()
    overrides = ["student.epochs=2", "train.epochs=2"] if args.quick else []
    base = config.load(preset_name=args.preset, overrides=overrides)
    space = QUICK_SPACE if args.quick else SPACE
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)  # the local executor's threads: every core
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"training the teachers of {args.preset} once ...", file=sys.stderr)
        with RunStore(root / "store-teachers") as store:  # one point: the teachers, their cache, one trial
            run_search(base, make_spec(base, search="grid", space=[parse_dimension(space[0].split(",")[0])],
                                       seeds=1), root / "teachers", store=store)
        executors = ["local", "processes"]
        if not args.no_ray:
            import importlib.util
            if importlib.util.find_spec("ray") is None:
                print("ray is not installed (pip install 'kdlab[ray]'): measuring local and processes only",
                      file=sys.stderr)
            else:
                executors.append("ray")
        figures: dict[str, list[tuple[float, float, int]]] = {e: [] for e in executors}
        for r in range(args.rounds):
            for executor in executors:
                print(f"round {r + 1}: {executor} ...", file=sys.stderr)
                figures[executor].append(search(base, space, root / f"r{r}", root / "teachers", executor,
                                                args.workers))
    print(f"{len(space)}-field grid on {args.preset}, 1 student seed per point, {cores} cores; processes and ray: "
          f"{args.workers} workers x {max(1, cores // args.workers)} thread(s)")
    print(f"{'executor':<10} {'round':>5} {'trials':>6} {'seconds':>8} {'start-up s':>10} {'trials/min':>10}")
    rates: dict[str, list[float]] = {}
    for executor, runs in figures.items():
        for r, (seconds, first, trials) in enumerate(runs):
            rate = trials / (seconds / 60)
            rates.setdefault(executor, []).append(rate)
            print(f"{executor:<10} {r + 1:>5} {trials:>6} {seconds:>8.1f} {first:>10.1f} {rate:>10.2f}")
    local = sum(rates["local"]) / len(rates["local"])
    for executor, goal in GOALS.items():
        if executor in rates:
            ratio = sum(rates[executor]) / len(rates[executor]) / local
            print(f"{executor} / local: {ratio:.2f}x trials per minute (goal >= {goal}x: "
                  f"{'met' if ratio >= goal else 'not met'})")


if __name__ == "__main__":
    main()
