"""When does distillation pay? The share of the train split x the student's width, over teacher seeds.

    python benchmarks/when_kd_pays.py [--preset digits-demo] [--shares 0.2 0.4 0.7 1.0] [--widths 0.125 0.25]
                                      [--teacher-seeds 0 100 200] [--student-seeds 8] [--hold steps]
                                      [--save assets/when_kd_pays.json] [--out DIR] [--threads 2] [--workers 2]
                                      [--quick]

Per (share, teacher seed) one sweep of the preset (`data.train_fraction=share`, `seed=S`: new teachers
and new student seeds): the teachers and their ensemble are trained once on that share of the train
split, then per `--widths` value a scratch and a distilled student per student seed (`student.width`
is the sweep's axis, so both widths learn from the same teachers; with `--workers 2` the two widths
train at once, one thread each). Val and test are the same images at every share, and a smaller share
keeps a subset of a larger one's train images.

`--hold steps` (default) multiplies every epoch count by (full-split steps per epoch) / (steps per epoch
at the share), so teachers and students take as many optimiser steps at every share and only the
number of distinct images changes; `--hold epochs` keeps the preset's epochs (fewer steps on less
data: data and training budget shrink together).

Teacher seeds are `seed=S` runs, whose students use seeds S + 500000 + i (core.students): two teacher
seeds closer than `--student-seeds` would share scratch students, so they are refused.

Per cell (share x width), with the project's definitions (core.evaluate.gain_recovery, against the
run's target ensemble): the ensemble gap = ensemble test acc - mean scratch test acc, the gain = KD -
scratch test acc (paired by student seed, mean over seeds), and gain recovery = gain / gap of the
means; each mean +- std over teacher seeds, with every teacher seed's value, and the recovery of the
cell's means (mean gain / mean gap). Gap and gain are also given in test images. Every figure printed
comes from the same run and is saved to `--save` as JSON (with the command and the date), which the
Learn page draws. With `--out`, runs are kept there and a rerun resumes from their checkpoints.
`--quick`: a smoke check (2 shares, 1 teacher seed, 1 student seed, 2 epochs), under 2 minutes;
it saves nothing unless `--save` is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402
from core.config import RunConfig  # noqa: E402
from core.data import load_data  # noqa: E402
from core.evaluate import gain_recovery  # noqa: E402
from core.models import ModelSpec, model_card  # noqa: E402
from core.search.engine import run_search  # noqa: E402
from core.search.space import space_from_axes  # noqa: E402
from core.search.spec import make_spec  # noqa: E402
from core.store import RunStore  # noqa: E402
from core.sweep import Axis  # noqa: E402
from core.tables import Column, text_table  # noqa: E402

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SAVE = ROOT / "assets" / "when_kd_pays.json"
TARGET = 0.5  # the gain recovery the project's goal asks for (BENCHMARKS.md)
MIN_GAP_IMAGES = 2.0  # an ensemble lead (mean over teacher seeds) under this many test images is seed noise
QUICK = {"shares": [0.4, 1.0], "teacher_seeds": [0], "student_seeds": 1, "epochs": 2}


def _mean_std(values: list[float]) -> dict[str, float | int | None]:
    """Mean and sample std over the defined values (std 0 for one value; None for none)."""
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else 0.0, "n": len(values)}


def overlapping_seeds(teacher_seeds: list[int], student_seeds: int) -> list[tuple[int, int]]:
    """Pairs of teacher seeds whose runs share student seeds (S + i for i < student_seeds)."""
    ordered = sorted(set(teacher_seeds))
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a < student_seeds]


def cell_config(base: RunConfig, share: float, teacher_seed: int, hold: str = "steps",
                full_train: int | None = None) -> RunConfig:
    """The base config on `share` of the train split with teacher seed `teacher_seed`.

    hold='steps': every epoch count scaled so the optimiser steps match the full split's (full_train
    images, steps per epoch = images // batch as the loop drops the last partial batch; without
    full_train, by 1 / share); hold='epochs': the base's epochs.
    """
    if hold not in ("steps", "epochs"):
        raise ValueError(f"hold must be 'steps' or 'epochs', got {hold!r}")
    raw = base.to_dict()
    raw["data"]["train_fraction"] = share
    raw["seed"] = teacher_seed
    if hold == "steps" and share < 1.0:
        batch = base.train.batch_size
        if full_train is None:
            scale = 1.0 / share
        else:  # round(share * n) images at the share: what core.data.load keeps
            scale = max(1, full_train // batch) / max(1, int(round(share * full_train)) // batch)
        raw["train"]["epochs"] = max(1, round(base.train.epochs * scale))
        if base.student.epochs is not None:
            raw["student"]["epochs"] = max(1, round(base.student.epochs * scale))
    return config.validate(raw)


def measure_cell(cfg: RunConfig, widths: list[float], student_seeds: int, out: Path,
                 workers: int = 1) -> dict[float, dict[str, float | None]]:
    """One sweep over `widths` on the teachers of `cfg`: per width the figures of one teacher seed.

    workers > 1: the widths train at once in that many worker processes (the processes executor; the
    teachers are trained once, before them). A 0.1M-param student keeps one core busy, not two, so on 2
    cores two one-thread workers train about twice the students per minute (BENCHMARKS.md, Executors).
    """
    parallel = workers > 1 and len(widths) > 1
    spec = make_spec(cfg, search="grid", space=space_from_axes([Axis("student.width", tuple(widths))]),
                     seeds=student_seeds, executor="processes" if parallel else "local",
                     workers=min(workers, len(widths)) if parallel else None)
    with RunStore(out) as store:
        result = run_search(cfg, spec, out, store=store)
    best_teacher = max(t.test_acc for t in result.teachers)
    figures: dict[float, dict[str, float | None]] = {}
    for row in result.rows:
        figures[float(row.value("student.width"))] = {
            "ensemble": row.ensemble_test_acc, "best_teacher": best_teacher, "scratch": row.scratch_test_acc_mean,
            "kd": row.kd_test_acc_mean, "gap": row.ensemble_test_acc - row.scratch_test_acc_mean,
            "gain": row.paired_gain_mean, "recovery": row.gain_recovery}
    missing = [w for w in widths if w not in figures]
    if missing:  # a failed trial has no row: a cell without it would be silently averaged over fewer seeds
        raise RuntimeError(f"the sweep in {out} finished no trial for student.width {missing}")
    return figures


def summarise(per_seed: list[dict[str, Any]], test_images: int) -> dict[str, Any]:
    """A cell's figures over teacher seeds: mean +- std of each (recovery over the seeds where it is
    defined), the recovery of the means, and whether the ensemble's lead is large enough to measure."""
    out: dict[str, Any] = {"per_teacher_seed": per_seed}
    for key in ("ensemble", "best_teacher", "scratch", "kd", "gap", "gain", "recovery"):
        out[key] = _mean_std([s[key] for s in per_seed if s[key] is not None])
    # gain_recovery(kd, scratch, ensemble) of the means over teacher seeds: stable where one seed's gap is tiny
    of_means = gain_recovery(out["kd"]["mean"], out["scratch"]["mean"], out["ensemble"]["mean"])
    out["recovery_of_means"] = None if of_means is None else round(of_means, 6)
    out["seeds_reaching_target"] = sum(s["recovery"] is not None and s["recovery"] >= TARGET for s in per_seed)
    out["gap_resolved"] = out["gap"]["mean"] * test_images >= MIN_GAP_IMAGES
    # A verdict needs a lead worth recovering at every teacher seed: where the ensemble is not ahead of the
    # scratch student at one seed (recovery undefined there) the mean of the others is no answer either.
    out["resolved"] = out["gap_resolved"] and out["recovery"]["n"] == len(per_seed)
    out["reaches_target"] = out["resolved"] and out["recovery"]["mean"] >= TARGET
    return out


def run_benchmark(base: RunConfig, shares: list[float], widths: list[float], teacher_seeds: list[int],
                  student_seeds: int, root: Path, hold: str = "steps", workers: int = 1) -> dict[str, Any]:
    """Every cell of the grid: the figures the script prints and saves (JSON-ready, without command and date)."""
    if overlapping_seeds(teacher_seeds, student_seeds):
        raise ValueError(f"teacher seeds {overlapping_seeds(teacher_seeds, student_seeds)} are closer than "
                         f"{student_seeds} apart: their runs would share scratch students")
    started = time.perf_counter()
    full = load_data(base.data.model_copy(update={"train_fraction": 1.0}), "cpu")
    params = {str(w): model_card(ModelSpec(base.student.model, width=w, depth=base.student.depth), full.num_classes,
                                 full.in_chans, full.image_size, field="student.width")["params"] for w in widths}
    per_cell: dict[tuple[float, float], list[dict[str, Any]]] = {(s, w): [] for s in shares for w in widths}
    splits: dict[float, dict[str, int]] = {}
    for share in shares:
        for seed in teacher_seeds:
            cfg = cell_config(base, share, seed, hold, full_train=len(full.train))
            if share not in splits:  # the split does not depend on the teacher seed
                data = load_data(cfg.data, "cpu")
                splits[share] = {"train_images": len(data.train), "test_images": len(data.test),
                                 "teacher_epochs": cfg.train.epochs,
                                 "student_epochs": cfg.student.epochs or cfg.train.epochs}
            cell_started = time.perf_counter()
            figures = measure_cell(cfg, widths, student_seeds, root / f"share{share:g}-seed{seed}", workers)
            seconds = time.perf_counter() - cell_started
            log.info("share %g, teacher seed %d: %.0f s", share, seed, seconds)
            print(f"share {share:g}, teacher seed {seed} ({seconds:.0f} s): " + "; ".join(
                f"w{w:g} ensemble {f['ensemble']:.4f} KD {f['kd']:.4f} scratch {f['scratch']:.4f} recovery "
                f"{'-' if f['recovery'] is None else format(f['recovery'], '.2f')}" for w, f in figures.items()),
                flush=True)
            for width, f in figures.items():
                per_cell[(share, width)].append(
                    {"teacher_seed": seed, **{k: None if v is None else round(v, 6) for k, v in f.items()}})
    cells = [{"share": s, "width": w, **splits[s], **summarise(per_cell[(s, w)], splits[s]["test_images"])}
             for s in shares for w in widths]
    return {"preset": base.name, "data": base.data.name, "student_model": base.student.model, "hold": hold,
            "workers": workers, "shares": shares, "widths": widths, "width_params": params,
            "teacher_seeds": teacher_seeds, "student_seeds": student_seeds, "target": TARGET,
            "min_gap_images": MIN_GAP_IMAGES, "seconds": round(time.perf_counter() - started, 1), "cells": cells}


def _pm(stat: dict[str, Any], digits: int = 4, sign: bool = False, scale: float = 1.0) -> str:
    """'mean +- std' of a _mean_std dict (scale: e.g. test images per unit of accuracy)."""
    if stat["mean"] is None:
        return "undefined"
    return f"{stat['mean'] * scale:{'+' if sign else ''}.{digits}f} +- {stat['std'] * scale:.{digits}f}"


def _recovery(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _recovery_pm(c: dict[str, Any]) -> str:
    """'mean +- std' of a cell's recovery, with the count when it is undefined at some teacher seeds."""
    n, seeds = c["recovery"]["n"], len(c["per_teacher_seed"])
    return _pm(c["recovery"], 2) + (f" (n={n})" if 0 < n < seeds else "")


def table_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One printable row per cell (share x width), every figure as text."""
    rows = []
    for c in report["cells"]:
        n = c["test_images"]
        rows.append({"share": f"{c['share']:g}", "width": f"{c['width']:g}", "train": str(c["train_images"]),
                     "epochs": f"{c['teacher_epochs']}/{c['student_epochs']}", "ensemble": _pm(c["ensemble"]),
                     "scratch": _pm(c["scratch"]), "kd": _pm(c["kd"]), "gap": _pm(c["gap"], sign=True),
                     "gap_img": _pm(c["gap"], 1, scale=n), "gain": _pm(c["gain"], sign=True),
                     "gain_img": _pm(c["gain"], 1, sign=True, scale=n), "recovery": _recovery_pm(c),
                     "per_seed": ", ".join(_recovery(s["recovery"]) for s in c["per_teacher_seed"]),
                     "of_means": _recovery(c["recovery_of_means"]),
                     "target": "yes" if c["reaches_target"] else "no" if c["resolved"] else "n/a"})
    return rows


COLUMNS = [Column("share", "share"), Column("width", "width"), Column("train img", "train"),
           Column("epochs T/S", "epochs"), Column("ensemble", "ensemble"), Column("scratch", "scratch"),
           Column("KD", "kd"), Column("gap", "gap"), Column("gap img", "gap_img"), Column("KD - scratch", "gain"),
           Column("gain img", "gain_img"), Column("recovery", "recovery"), Column("per teacher seed", "per_seed"),
           Column("of means", "of_means"), Column(f">= {TARGET}", "target")]


def format_report(report: dict[str, Any]) -> str:
    """The table (mean +- std over teacher seeds) and the answer: where gain recovery reaches the target."""
    widths = ", ".join(f"w{w:g} = {report['width_params'][str(w)]:,} params" for w in report["widths"])
    lines = [f"{report['preset']}: {report['student_model']} students ({widths}); teacher seeds "
             f"{report['teacher_seeds']} x {report['student_seeds']} student seed(s); hold {report['hold']}; "
             f"test accuracy, mean +- std over teacher seeds; {report['seconds']:.0f} s", "",
             text_table(table_rows(report), COLUMNS), ""]

    def where(cells: list[dict[str, Any]]) -> str:
        return ", ".join(f"share {c['share']:g} w{c['width']:g} ({_recovery_pm(c)}, "
                         f"{c['seeds_reaching_target']}/{len(c['per_teacher_seed'])} teacher seeds)"
                         for c in cells) or "none"
    cells = report["cells"]
    lines.append(f"gain recovery >= {TARGET} (mean over teacher seeds) at: "
                 f"{where([c for c in cells if c['reaches_target']])}")
    lines.append(f"below {TARGET} at: {where([c for c in cells if c['resolved'] and not c['reaches_target']])}")
    open_cells = [c for c in cells if not c["resolved"]]
    if open_cells:
        lines.append(f"no answer (the ensemble leads by under {report['min_gap_images']:g} test images, or not at "
                     "every teacher seed): " + ", ".join(
                         f"share {c['share']:g} w{c['width']:g} (gap {_pm(c['gap'], 1, scale=c['test_images'])} "
                         f"images, recovery defined at {c['recovery']['n']}/{len(c['per_teacher_seed'])} teacher "
                         "seeds)" for c in open_cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits-demo")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.2, 0.4, 0.7, 1.0])
    parser.add_argument("--widths", type=float, nargs="+", default=[0.125, 0.25],
                        help="student.width values (the preset's 0.125 and twice it)")
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=[0, 100, 200],
                        help="run seeds; at least --student-seeds apart, so no two runs share a student")
    parser.add_argument("--student-seeds", type=int, default=8)
    parser.add_argument("--hold", choices=["steps", "epochs"], default="steps")
    parser.add_argument("--save", type=Path, default=None, help=f"where the figures go as JSON (default {SAVE}, "
                        "none with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (resumable)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the teachers (and of local trials)")
    parser.add_argument("--workers", type=int, default=2,
                        help="student trials at once (processes executor, 1 thread each); 1 = one at a time")
    parser.add_argument("--quick", action="store_true", help="2 shares, 1 teacher seed, 1 student seed, 2 epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    overrides = []
    if args.quick:
        args.shares, args.teacher_seeds = QUICK["shares"], QUICK["teacher_seeds"]
        args.student_seeds, overrides = QUICK["student_seeds"], [f"train.epochs={QUICK['epochs']}"]
    elif args.save is None:  # a smoke check must not overwrite the figures the Learn page draws
        args.save = SAVE
    if overlapping_seeds(args.teacher_seeds, args.student_seeds):
        parser.error(f"teacher seeds {overlapping_seeds(args.teacher_seeds, args.student_seeds)} are closer than "
                     f"--student-seeds {args.student_seeds}: their runs would share scratch students")
    base = config.load(preset_name=args.preset, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        report = run_benchmark(base, args.shares, args.widths, args.teacher_seeds, args.student_seeds,
                               args.out or Path(tmp), args.hold, args.workers)
    report = {"command": shlex.join(["python", "benchmarks/when_kd_pays.py", *sys.argv[1:]]),
              "date": datetime.date.today().isoformat(), **report}
    print("\n" + format_report(report))
    if args.save is not None:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(report, indent=1) + "\n")
        print(f"figures saved to {args.save}")


if __name__ == "__main__":
    main()
