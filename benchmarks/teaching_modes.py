"""Cost of one student trial per teaching mode, against a scratch trial measured in the same run.

    python benchmarks/teaching_modes.py [--preset digits-demo] [--threads 2] [--repeats 3]

Trains the preset's teachers once (into a temporary folder), builds the ensemble target, then
times student trials with the same seed, epochs and batches: scratch (hard labels), KD from the
plain logit cache, KD from the per-view cache (consistent views) and KD with live teachers. Trials
alternate over `--repeats` rounds and the median is reported, with its ratio to scratch (goal for
cached KD: <= 1.15x). The one-off seconds spent filling the per-view cache are printed apart.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402
from core.cache import CacheStats, teacher_logits  # noqa: E402
from core.ensemble import combine  # noqa: E402
from core.pipeline import prepare, teaching_stage, train_teacher  # noqa: E402
from core.students import Teaching, train_student  # noqa: E402
from core.train import CancelToken, EventBus  # noqa: E402

GOAL_RATIO = 1.15
MODES = ("scratch", "cached", "views", "live")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.load(preset_name=args.preset, overrides=args.overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        prep = prepare(cfg, out)
        events, cancel, stats = EventBus(), CancelToken(), CacheStats()
        draws, logits = [], []
        for m in prep.members:
            for s in range(m.cfg.seeds):
                entry, model = train_teacher(prep, m, s, out, events, cancel)
                draws.append((model, entry.weights_hash))
                logits.append(teacher_logits(model, entry.weights_hash, prep.data, out / "cache", stats))
        stack = {split: torch.stack([z[split] for z in logits]) for split in ("train", "val", "test")}
        target = combine(cfg.ensemble.scheme, stack, prep.data.val.y)
        teachings = {}
        for mode in ("cached", "views", "live"):
            mode_cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"teaching": mode})})
            teachings[mode] = teaching_stage(replace(prep, cfg=mode_cfg), target, draws, out, stats)
        teachings["scratch"] = teachings["cached"]
        seconds = {mode: [] for mode in MODES}
        accs = {mode: [] for mode in MODES}
        for r in range(args.repeats):
            for mode in MODES:
                kind = "scratch" if mode == "scratch" else "kd"
                start = time.perf_counter()
                run = train_student(cfg, prep.data, kind, 0, out / f"{mode}-{r}", events, cancel, teachings[mode])
                seconds[mode].append(time.perf_counter() - start)
                accs[mode].append(run.entry.test_acc)
    epochs = cfg.student.train_config(cfg.train).epochs
    print(f"preset={args.preset} device={prep.device} threads={args.threads} torch={torch.__version__} "
          f"teachers={len(draws)} student epochs={epochs} repeats={args.repeats}")
    views = teachings["views"].views
    print(f"per-view cache: {views.num_views} views x {len(prep.data.train)} train images x {len(draws)} "
          f"teachers filled once in {teachings['views'].seconds:.1f} s")
    base = statistics.median(seconds["scratch"])
    for mode in MODES:
        med = statistics.median(seconds[mode])
        note = f"  goal <= {GOAL_RATIO}x: {'met' if med / base <= GOAL_RATIO else 'NOT met'}" if mode == "cached" else ""
        print(f"  {mode:<8} {med:6.2f} s per trial  {med / base:5.2f}x scratch  "
              f"test acc {statistics.mean(accs[mode]):.4f}{note}")


if __name__ == "__main__":
    main()
