"""Seconds for diagnose() on cached logits (default 10,000 test examples x 5 members x 3 draws x 10 classes).

    python benchmarks/diagnostics_speed.py [--examples 10000] [--members 5] [--draws 3] [--classes 10]
                                           [--student-seeds 3] [--repeats 5] [--threads 2]

Random logits on the CPU, with val logits (half the test size) for the growth order and a KD and a
scratch student. Prints the median of interleaved repeats of diagnose() and of a reference measured
in the same run: one log_softmax + mean over members and draws of the same fp32 tensor (the least
work any ensemble of these logits does), and the ratio of the 1 s goal to diagnose's median.

diagnose runs a few hundred small tensor ops. On a CPU shared with other busy processes, OpenMP's
idle threads spin between ops and each op can wait out a scheduler time slice (about 8 ms here);
`OMP_WAIT_POLICY=PASSIVE` (set before Python starts) or `--threads 1` avoids that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.diagnostics import diagnose  # noqa: E402

GOAL_SECONDS = 1.0


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--student-seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    m, d, n, k = args.members, args.draws, args.examples, args.classes
    # Members that agree with the label more than chance, so the terms are in a realistic range
    y = torch.randint(0, k, (n,), generator=gen)
    signal = 3.0 * torch.nn.functional.one_hot(y, k).float()
    logits = 2.0 * torch.randn(m, d, n, k, generator=gen) + signal
    val_y = y[: n // 2]
    val = logits[:, :, : n // 2] + 0.1 * torch.randn(m, d, n // 2, k, generator=gen)
    students = {}
    if args.student_seeds:
        students = {name: 2.0 * torch.randn(args.student_seeds, n, k, generator=gen) + signal
                    for name in ("kd", "scratch")}
    names = [f"member{i}" for i in range(m)]

    def run() -> dict:
        return diagnose(logits, y, member_names=names, val_logits=val, val_y=val_y, students=students)

    def reference() -> torch.Tensor:
        return logits.log_softmax(dim=-1).mean(dim=(0, 1))

    diag = run()  # warm-up: first-call allocations and lazy imports
    reference()
    times, refs = [], []
    for _ in range(args.repeats):  # interleaved, so load on the shared machine hits both alike
        times.append(_seconds(run))
        refs.append(_seconds(reference))
    t, r = statistics.median(times), statistics.median(refs)
    size = len(json.dumps(diag, allow_nan=False))
    print(f"diagnose M={m} D={d} N={n} K={k} students=2x{args.student_seeds} seeds threads={args.threads} "
          f"torch={torch.__version__}")
    print(f"  diagnose            {t:.3f} s (median of {args.repeats}; "
          f"min {min(times):.3f}, max {max(times):.3f})")
    print(f"  reference           {r * 1000:.2f} ms (log_softmax + mean over members and draws, fp32)")
    print(f"  ratio diagnose/reference {t / r:.0f}x; goal {GOAL_SECONDS:.0f} s: ratio goal/actual "
          f"{GOAL_SECONDS / t:.1f}x; JSON {size / 1000:.1f} kB")


if __name__ == "__main__":
    main()
