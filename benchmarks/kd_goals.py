"""The distillation goals of a preset, replicated over teacher seeds.

    python benchmarks/kd_goals.py [--preset digits-demo] [--teacher-seeds 0 1 2] [--student-seeds 8]
                                  [--out DIR] [--threads 2]

One full run per teacher seed (`--set seed=S`: new teachers, new split of the student seeds), each
with `--student-seeds` scratch and distilled students. Per teacher seed it prints:

- the best ensemble's test NLL against the best single teacher's (goal: ratio <= 1);
- KD and scratch test accuracy, mean +- std over student seeds, and their paired gain (goal: > 0);
- gain recovery = (acc_KD - acc_scratch) / (acc_ensemble - acc_scratch) of the means, and per
  student seed (mean +- std), against the run's own target ensemble.

Then the same figures over teacher seeds (mean +- std), which is what a claim about the preset
rests on: one set of teachers is one draw. With `--out`, runs are kept there and a rerun resumes
from their checkpoints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402
from core.pipeline import prepare, run_experiment  # noqa: E402
from core.results import RunResults  # noqa: E402


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def goals_of_run(results: RunResults) -> dict[str, float]:
    """The goal figures of one run's results.json."""
    rows = results.comparison
    teacher_nll = min(r.test_nll_mean for r in rows if r.kind == "teacher")
    ensemble_nll = min(r.test_nll_mean for r in rows if r.kind == "ensemble")
    kd_acc = {s.seed: s.test_acc for s in results.kd()}
    scratch_acc = {s.seed: s.test_acc for s in results.scratch()}
    gains = [kd_acc[seed] - scratch_acc[seed] for seed in sorted(kd_acc)]
    recovery = results.summary.gain_recovery
    return {"ensemble_nll": ensemble_nll, "teacher_nll": teacher_nll,
            "kd": statistics.fmean(kd_acc.values()), "scratch": statistics.fmean(scratch_acc.values()),
            "gain": statistics.fmean(gains), "recovery": recovery.of_means,
            "recovery_seed_mean": recovery.mean, "recovery_seed_std": recovery.std}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--student-seeds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (resumable)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        goals = []
        for seed in args.teacher_seeds:
            cfg = config.load(preset_name=args.preset,
                              overrides=[f"seed={seed}", f"student.seeds={args.student_seeds}"])
            out = root / f"{args.preset}-seed{seed}"
            g = goals_of_run(run_experiment(prepare(cfg, out), out))
            goals.append(g)
            print(f"teacher seed {seed}: ensemble NLL {g['ensemble_nll']:.4f} / best teacher "
                  f"{g['teacher_nll']:.4f} = {g['ensemble_nll'] / g['teacher_nll']:.2f}x; "
                  f"KD {g['kd']:.4f} vs scratch {g['scratch']:.4f} (gain {g['gain']:+.4f}); "
                  f"gain recovery {g['recovery']:.2f} (per student seed "
                  f"{g['recovery_seed_mean']:.2f} +- {g['recovery_seed_std']:.2f})", flush=True)

    n = len(goals)
    print(f"\n{args.preset} over {n} teacher seed(s) x {args.student_seeds} student seeds (mean +- std over "
          "teacher seeds):")
    for key, label in [("kd", "KD test acc"), ("scratch", "scratch test acc"), ("gain", "paired gain"),
                       ("recovery", "gain recovery")]:
        mean, std = _mean_std([g[key] for g in goals])
        print(f"  {label:<17} {mean:+.4f} +- {std:.4f}" if key == "gain" else
              f"  {label:<17} {mean:.4f} +- {std:.4f}")
    ratio = _mean_std([g["ensemble_nll"] / g["teacher_nll"] for g in goals])
    print(f"  ensemble NLL / best teacher NLL {ratio[0]:.2f}x +- {ratio[1]:.2f} "
          f"(<= 1 at {sum(g['ensemble_nll'] <= g['teacher_nll'] for g in goals)}/{n})")
    print(f"  KD > scratch in mean at {sum(g['gain'] > 0 for g in goals)}/{n} teacher seeds; "
          f"gain recovery >= 0.5 at {sum(g['recovery'] >= 0.5 for g in goals)}/{n}")


if __name__ == "__main__":
    main()
