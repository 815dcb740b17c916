"""Seconds for the teacher stage of a preset (default digits-demo) against its 30 s goal, and for the
whole run against its 60 s goal.

    python benchmarks/teacher_stage.py [--preset digits-demo] [--threads 2]

Runs the real pipeline into a temporary folder (nothing cached from earlier runs). The teacher stage
is timed from the start of `prepare` (data, model checks) to the `ensembles` stage event, i.e. every
teacher trained, evaluated on test and its logits cached; the whole run to the end of
`run_experiment` (teachers, ensembles, students, diagnostics, cost measurement). Prints each
teacher's training seconds, both totals, and each goal over its total (> 1 = met).
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
from core.train import Event, EventBus  # noqa: E402

GOAL_SECONDS = 30.0      # teacher stage
RUN_GOAL_SECONDS = 60.0  # the whole digits-demo run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.load(preset_name=args.preset, overrides=args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        marks: dict[str, float] = {}

        def mark(event: Event) -> None:
            if event.kind == "stage":
                marks.setdefault(event.source, time.perf_counter())

        start = time.perf_counter()
        prep = prepare(cfg, Path(tmp) / "run")
        results = run_experiment(prep, Path(tmp) / "run", EventBus(mark))
        total = time.perf_counter() - start
        teachers = marks["ensembles"] - start
    print(f"preset={args.preset} device={prep.device} threads={args.threads} torch={torch.__version__}")
    for t in results.teachers:
        print(f"  {t.name:<24} s{t.seed}  {t.train_seconds:6.1f} s  test acc {t.test_acc:.4f}")
    print(f"teacher stage {teachers:.1f} s (data, models, training, test evaluation, logit cache); "
          f"goal {GOAL_SECONDS:.0f} s; ratio goal/actual {GOAL_SECONDS / teachers:.2f}x")
    print(f"whole run {total:.1f} s (teachers, ensembles, students, diagnostics, cost); "
          f"goal {RUN_GOAL_SECONDS:.0f} s; ratio goal/actual {RUN_GOAL_SECONDS / total:.2f}x")


if __name__ == "__main__":
    main()
