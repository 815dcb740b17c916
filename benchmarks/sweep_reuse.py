"""What a sweep saves: a grid of student settings as one sweep against one full run per point.

    python benchmarks/sweep_reuse.py [--preset digits-demo] [--points 3] [--threads 2]

Measures, in one process and on the same machine state: one full run of the preset (teachers,
logit cache, ensembles, students, diagnostics, cost) and one sweep of `--points` temperatures (the
teachers trained once, scratch students shared). Prints the seconds of each and the ratio of the
sweep to `--points` full runs, which is what running the grid as separate `kdlab run`s would cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402
from core.pipeline import prepare, run_experiment  # noqa: E402
from core.sweep import Axis, run_sweep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--points", type=int, default=3, help="temperatures in the sweep (1, 2, 3, ...)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.load(preset_name=args.preset)
    temperatures = tuple(float(t) for t in range(1, args.points + 1))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run_experiment(prepare(cfg, Path(tmp) / "run"), Path(tmp) / "run")
        run_s = time.perf_counter() - started
        started = time.perf_counter()
        result = run_sweep(cfg, [Axis("distill.temperature", temperatures)], Path(tmp) / "sweep")
        sweep_s = time.perf_counter() - started
    print(f"{args.preset}: one full run {run_s:.1f} s; a sweep of {args.points} temperatures {sweep_s:.1f} s "
          f"({len(result.rows)} rows, {cfg.student.seeds} seeds)")
    print(f"sweep / {args.points} full runs = {sweep_s / (args.points * run_s):.2f}x "
          f"(a sweep point costs {sweep_s / args.points:.1f} s against {run_s:.1f} s for a run)")


if __name__ == "__main__":
    main()
