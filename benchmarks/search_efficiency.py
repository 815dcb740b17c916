"""Search efficiency: TPE and random at a small budget against the full student grid, and ASHA's saving.

    python benchmarks/search_efficiency.py [--preset digits-demo] [--seeds 2] [--trials 6]
        [--sampler-seeds 0 1 2 3 4 5 6 7 8 9] [--asha-sampler-seeds 0 1 2 3 4] [--out DIR] [--threads 2]
    python benchmarks/search_efficiency.py --quick          # a small smoke version (~2 min)

Three measurements, all in one process, every figure from this run:

1. The grid: every point of student.lr=0.003,0.01,0.02 x distill.temperature=1,2,4 x
   distill.alpha=0.9,1 (18 points, `--search grid`), `--seeds` distilled students per point; the
   value of a point is its KD val accuracy, the mean over those seeds (the search objective). The
   target is the grid's best less one val image (1 / len(val)).
2. Replays: TPE and random, `--trials` each, one study per sampler seed, over the same 18-point
   categorical space and into the grid's folder. Every point they ask for is already trained there
   and is restored from its finished checkpoints (0 epochs; the script checks both that and that
   each value equals the grid's), so the replays are exact and cheap. Per study: the trials until
   the best-so-far val accuracy reaches the target, and the best val accuracy found; then the
   median over sampler seeds (a study that does not reach it counts as more than its budget).
   Goal: TPE's median <= 1/3 of the grid's trials.
3. ASHA: TPE with `--trials` once unpruned and once with `prune="asha"`, for each of
   `--asha-sampler-seeds`, each in a fresh folder holding a copy of the grid's teachers/ and cache/
   (so the same teachers and logit cache, and only students train). Student epochs trained (sum of
   TrialSummary.epochs: KD and scratch) and the best val accuracy each found. Goal: the epochs with
   ASHA <= 0.6x the unpruned search's (the ratio of the sums over sampler seeds).

With `--out`, everything is kept there (a store in <out>/store, studies in its optuna.db) and a
rerun resumes: finished studies are read back, not trained again.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its threads (as core/__init__.py)

import argparse  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402
from core.prepare import prepare  # noqa: E402
from core.search.engine import run_search  # noqa: E402
from core.search.rows import SweepResult  # noqa: E402
from core.search.space import parse_dimension  # noqa: E402
from core.search.spec import make_spec  # noqa: E402
from core.store import RunStore  # noqa: E402
from core.train import Event, EventBus  # noqa: E402

SPACE = ("student.lr=0.003,0.01,0.02", "distill.temperature=1,2,4", "distill.alpha=0.9,1")
QUICK_SPACE = ("student.lr=0.003,0.02", "distill.temperature=1,4")
QUICK_SET = ("train.epochs=3", "student.epochs=4")  # teachers 3 epochs, students 4
EPS = 1e-9  # val accuracies are fractions of whole images: equal ones must not differ by rounding


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class TrialLog:
    """EventBus subscriber: one stderr line per trial started (the sweep's own stage events)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, event: Event) -> None:
        if event.kind == "stage" and event.source == "trial":
            progress(f"  {self.label}: {event.message}")


@dataclass
class Search:
    """One finished study, as this benchmark reads it."""

    label: str
    values: list[float | None]        # val accuracy per trial in trial order; None: pruned or failed
    points: list[tuple]               # the point of each trial (in space order)
    states: list[str]
    repeats: int                      # proposals of finished points (not trials: nothing trained)
    epochs: int                       # student epochs trained (KD and scratch), all trials
    seconds: float

    @property
    def best(self) -> float | None:
        done = [v for v in self.values if v is not None]
        return max(done) if done else None

    def trials_to(self, target: float) -> float:
        """1-based trial at which the best-so-far val accuracy first reaches `target`; inf if never."""
        for i, v in enumerate(self.values, start=1):
            if v is not None and v >= target - EPS:
                return i
        return math.inf


def search(base, store: RunStore, out: Path, label: str, fields: list[str], **spec_args) -> Search:
    spec = make_spec(base, space=[parse_dimension(t) for t in spec_args.pop("space")], **spec_args)
    progress(f"{label}: {spec.search}, {spec.trials} trial(s), prune={spec.prune}, sampler seed "
             f"{spec.sampler_seed}, {spec.seeds} student seed(s), into {out.name}/")
    started = time.perf_counter()
    result: SweepResult = run_search(base, spec, out, store=store, events=EventBus(TrialLog(label)))
    seconds = time.perf_counter() - started
    # A repeat (a proposal of a point already finished, told that result) trains nothing and spends no
    # budget: the trials counted are the ones that trained, in the order they did.
    repeats = sum(t.state == "repeat" for t in result.trials)
    trials = sorted((t for t in result.trials if t.state != "repeat"), key=lambda t: t.number)
    s = Search(label=label, values=[t.values["val_acc"] if t.values else None for t in trials],
               points=[tuple(t.params[f] for f in fields) for t in trials], states=[t.state for t in trials],
               epochs=sum(t.epochs for t in trials), seconds=seconds, repeats=repeats)
    progress(f"{label}: done in {seconds:.0f} s; {repeats} repeat(s) told earlier results; per trial: " + ", ".join(
        f"{t.state} {fmt_acc(t.values['val_acc'] if t.values else None)} ({t.epochs} ep)" for t in trials))
    return s


def fmt_trials(n: float, budget: int) -> str:
    return f"not in {budget}" if math.isinf(n) else f"{n:g}"


def fmt_acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--seeds", type=int, default=None, help="student seeds per point (default 2; quick 1)")
    parser.add_argument("--trials", type=int, default=None, help="budget of TPE and random (default 6; quick 2)")
    parser.add_argument("--sampler-seeds", type=int, nargs="+", default=None,
                        help="sampler seeds of the replays (default 0..9; quick 0 1 2)")
    parser.add_argument("--asha-sampler-seeds", type=int, nargs="+", default=None,
                        help="sampler seeds of the ASHA comparison (default 0..4; quick 0)")
    parser.add_argument("--asha-trials", type=int, default=None, help="budget of the ASHA comparison "
                        "(default: --trials)")
    parser.add_argument("--quick", action="store_true", help=f"smoke version: space {' x '.join(QUICK_SPACE)}, "
                        f"{' '.join(QUICK_SET)}, 1 seed, 2 trials")
    parser.add_argument("--out", type=Path, default=None, help="work folder, kept (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quick = args.quick
    seeds = args.seeds or (1 if quick else 2)
    trials = args.trials or (2 if quick else 6)
    sampler_seeds = args.sampler_seeds or ([0, 1, 2] if quick else list(range(10)))
    asha_seeds = args.asha_sampler_seeds or ([0] if quick else list(range(5)))
    asha_trials = args.asha_trials or (3 if quick else trials)
    space = list(QUICK_SPACE if quick else SPACE)
    fields = [parse_dimension(t).field for t in space]
    base = config.load(preset_name=args.preset, overrides=list(QUICK_SET) if quick else [])
    n_val = prepare(base).data.summary()["val"]
    one_image = 1.0 / n_val
    wall = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        root = (args.out or Path(tmp)).absolute()
        root.mkdir(parents=True, exist_ok=True)
        with RunStore(root / "store") as store:
            # 1. the grid, every point once
            grid_dir = root / "grid"
            grid = search(base, store, grid_dir, "grid", fields, search="grid", space=space, seeds=seeds,
                          study="grid")
            n_grid = len(grid.values)
            value = dict(zip(grid.points, grid.values))
            grid_best = grid.best
            assert grid_best is not None, "no grid point finished"
            target = grid_best - one_image
            near = sum(v is not None and v >= target - EPS for v in grid.values)

            # 2. replays over the same space, in the grid's folder
            replays: dict[str, list[Search]] = {"tpe": [], "random": []}
            mismatches, replay_epochs = 0, 0
            replay_started = time.perf_counter()
            for s in sampler_seeds:
                for algo in replays:
                    r = search(base, store, grid_dir, f"{algo} s{s}", fields, search=algo, space=space,
                               trials=trials, seeds=seeds, sampler_seed=s, study=f"{algo}-s{s}")
                    mismatches += sum(v is None or abs(v - value[p]) > EPS for p, v in zip(r.points, r.values))
                    replay_epochs += r.epochs
                    replays[algo].append(r)
            replay_s = time.perf_counter() - replay_started

            # 3. ASHA against the unpruned search, fresh folders from the grid's teachers
            asha: list[tuple[int, Search, Search]] = []
            asha_started = time.perf_counter()
            for s in asha_seeds:
                pair = []
                for prune in ("none", "asha"):
                    folder = root / f"fresh-tpe-{prune}-s{s}"
                    if not folder.exists():
                        folder.mkdir()
                        for part in ("teachers", "cache"):
                            shutil.copytree(grid_dir / part, folder / part)
                    pair.append(search(base, store, folder, f"tpe {prune} s{s}", fields, search="tpe",
                                       space=space, trials=asha_trials, seeds=seeds, sampler_seed=s,
                                       prune=prune, study=f"fresh-tpe-{prune}-s{s}"))
                asha.append((s, pair[0], pair[1]))
            asha_s = time.perf_counter() - asha_started

    wall_s = time.perf_counter() - wall
    student_epochs = base.student.epochs or base.train.epochs

    print(f"\n{args.preset}: {n_grid}-point grid ({' x '.join(space)}), {seeds} student seed(s) per point, "
          f"{student_epochs} student epochs; val split {n_val} images (one image = {one_image:.4f})")
    print(f"grid: {n_grid} trials, {grid.epochs} student epochs, {grid.seconds:.0f} s; best val "
          f"{grid_best:.4f} at {grid.points[grid.values.index(grid_best)]}; target (best - 1/{n_val}) "
          f"{target:.4f}, reached by {near} of {n_grid} points")
    print(f"replays: {len(sampler_seeds)} sampler seeds x (tpe, random) x {trials} trials in the grid's folder, "
          f"{replay_s:.0f} s; {replay_epochs} student epochs trained (0 = all restored), "
          f"{mismatches} value(s) differing from the grid's")
    print("grid values (KD val accuracy, mean over seeds), best first: " + ", ".join(
        f"{'/'.join(f'{v:g}' for v in p)} {v:.4f}" for p, v in sorted(value.items(), key=lambda kv: -kv[1])))
    print(f"a uniform draw hits one of those {near} points with p = {near / n_grid:.3f}; {trials} independent "
          f"draws hit one with p = {1 - (1 - near / n_grid) ** trials:.2f}")
    print("\n| sampler seed | TPE trials to target | TPE best val | TPE distinct points (repeats told) | random "
          "trials to target | random best val | random distinct points (repeats told) |")
    print("|---|---|---|---|---|---|---|")
    for s, t, r in zip(sampler_seeds, replays["tpe"], replays["random"]):
        print(f"| {s} | {fmt_trials(t.trials_to(target), trials)} | {fmt_acc(t.best)} | {len(set(t.points))} ({t.repeats}) | "
              f"{fmt_trials(r.trials_to(target), trials)} | {fmt_acc(r.best)} | {len(set(r.points))} ({r.repeats}) |")
    med = {a: statistics.median([x.trials_to(target) for x in rs]) for a, rs in replays.items()}
    med_best = {a: statistics.median([x.best for x in rs]) for a, rs in replays.items()}
    reached = {a: sum(not math.isinf(x.trials_to(target)) for x in rs) for a, rs in replays.items()}
    print(f"| **median** | **{fmt_trials(med['tpe'], trials)}** ({reached['tpe']}/{len(sampler_seeds)} reached) | "
          f"{med_best['tpe']:.4f} | | {fmt_trials(med['random'], trials)} ({reached['random']}/{len(sampler_seeds)} "
          f"reached) | {med_best['random']:.4f} | |")
    print(f"| grid (reference) | {n_grid} (all points) | {grid_best:.4f} | {n_grid} | | | |")

    print("\n| sampler seed | unpruned: epochs | best val | ASHA: epochs | pruned trials | best val "
          "| ASHA / unpruned |")
    print("|---|---|---|---|---|---|---|")
    for s, none, pruned in asha:
        print(f"| {s} | {none.epochs} | {fmt_acc(none.best)} | {pruned.epochs} | "
              f"{pruned.states.count('pruned')}/{len(pruned.states)} | {fmt_acc(pruned.best)} | "
              f"{pruned.epochs / none.epochs:.2f}x |")
    sum_none, sum_asha = sum(a[1].epochs for a in asha), sum(a[2].epochs for a in asha)
    print(f"| **all** | {sum_none} | | {sum_asha} | {sum(a[2].states.count('pruned') for a in asha)}/"
          f"{sum(len(a[2].states) for a in asha)} | | **{sum_asha / sum_none:.2f}x** |")
    n = min(trials, asha_trials)  # a check of the replays: trained afresh, the same trials and values
    same = [s for s, none, _ in asha if s in sampler_seeds and
            (none.points[:n], none.values[:n]) == (replays["tpe"][sampler_seeds.index(s)].points[:n],
                                                    replays["tpe"][sampler_seeds.index(s)].values[:n])]
    print(f"fresh unpruned TPE = the replay of the same sampler seed (first {n} trials' points and values): "
          f"{len(same)}/{sum(s in sampler_seeds for s, _, _ in asha)}; ASHA comparison {asha_s:.0f} s")

    budget = n_grid / 3
    goal1 = med["tpe"] <= budget
    share = "-" if math.isinf(med["tpe"]) else f"{med['tpe'] / n_grid:.2f}x"
    print(f"\ngoal 1: TPE reaches the grid's best - 1/{n_val} ({target:.4f}) in <= 1/3 of the grid's trials "
          f"(<= {budget:.3g} of {n_grid}), median over {len(sampler_seeds)} sampler seeds: "
          f"{fmt_trials(med['tpe'], trials)} trial(s) = {share} the grid's {n_grid} "
          f"(random: {fmt_trials(med['random'], trials)}): {'met' if goal1 else 'not met'}")
    ratio = sum_asha / sum_none
    print(f"goal 2: TPE with ASHA costs <= 0.6x the student epochs of the unpruned TPE ({asha_trials} trials, "
          f"sampler seeds {' '.join(map(str, asha_seeds))}): {sum_asha} / {sum_none} = {ratio:.2f}x: "
          f"{'met' if ratio <= 0.6 else 'not met'}")
    print(f"wall time {wall_s / 60:.1f} min ({args.threads} threads)")


if __name__ == "__main__":
    main()
