"""A search's table: a sweep row per finished trial, the pick rule, and sweep.json / sweep.csv.

The rows keep the shape sweeps have always written (scripts read sweep.csv); a search adds every
trial's state and values, the Pareto set and the rule that chose the pick. The pick reads val
scores only: test accuracy is reported beside it, never used to choose.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic import write_json, write_text
from core.evaluate import gain_recovery_over_seeds, mean_std
from core.results import StudentEntry, TeacherEntry
from core.results.sweep import SCORE_COLUMNS, SweepFile, SweepRow, TrialSummary
from core.search.spec import SearchSpec
from core.sweep_grid import point_label

ROW_COLUMNS = (*SCORE_COLUMNS, "trial", "kd_val_acc_std", "latency_ms", "student_params", "run_id")


@dataclass
class SweepResult:
    """A finished (or stopped) sweep: rows of finished trials, the picked row, every trial's summary."""

    axes: list[str]
    rows: list[SweepRow]
    best: int | None
    teachers: list[TeacherEntry]
    target_accs: dict[str, float]
    warnings: list[str]
    trials: list[TrialSummary] = field(default_factory=list)
    pick_rule: str | None = None
    sweep_id: str | None = None
    study: str | None = None

    @property
    def best_trial(self) -> int | None:
        return None if self.best is None else self.rows[self.best].trial

    def counts(self) -> dict[str, int]:
        """Trials by state, e.g. {'finished': 5, 'pruned': 3}."""
        out: dict[str, int] = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


def sweep_row(point: dict[str, Any], names: list[str], kd: list[StudentEntry], scratch: list[StudentEntry],
              ensemble_acc: float) -> SweepRow:
    """One point's row: KD val scores (the pick's criterion), test scores, paired gain and gain recovery."""
    kd_acc = mean_std([e.test_acc for e in kd])
    sc_acc = mean_std([e.test_acc for e in scratch])
    gains = mean_std([k.test_acc - s.test_acc for k, s in zip(kd, scratch)])
    recovery = gain_recovery_over_seeds([e.test_acc for e in kd], [e.test_acc for e in scratch], ensemble_acc)
    vals = [e.val_acc for e in kd if e.val_acc is not None]
    val_nlls = [e.val_nll for e in kd if e.val_nll is not None]
    return SweepRow(**{n: point[n] for n in names}, point=point_label(point),
                    kd_val_acc=mean_std(vals)["mean"] if vals else None,
                    kd_val_nll=mean_std(val_nlls)["mean"] if val_nlls else None,
                    kd_test_acc_mean=kd_acc["mean"], kd_test_acc_std=kd_acc["std"],
                    kd_test_nll_mean=mean_std([e.test_nll for e in kd])["mean"],
                    scratch_test_acc_mean=sc_acc["mean"], scratch_test_acc_std=sc_acc["std"],
                    paired_gain_mean=gains["mean"], paired_gain_std=gains["std"],
                    ensemble_test_acc=ensemble_acc, gain_recovery=recovery["of_means"],
                    gain_recovery_per_seed_mean=recovery["mean"], gain_recovery_per_seed_std=recovery["std"],
                    seeds=len(kd), kd_train_seconds=mean_std([e.train_seconds for e in kd])["mean"])


def best_row(rows: list[SweepRow]) -> int | None:
    """The row with the highest mean KD val accuracy, ties broken by the lower val NLL, then by order.

    Val accuracy moves in steps of one val image, so ties are common on small val splits.
    """
    def key(i: int) -> tuple[float, float, int]:
        nll = rows[i].kd_val_nll
        return rows[i].kd_val_acc, -(nll if nll is not None else float("inf")), -i

    scored = [i for i, r in enumerate(rows) if r.kd_val_acc is not None]
    return max(scored, key=key) if scored else None


def pick_row(rows: list[SweepRow], spec: SearchSpec | None) -> int | None:
    """The row the spec's pick rule chooses (SearchSpec.pick_rule says it in words); val scores only."""
    if spec is None or not spec.multi_objective:
        return best_row(rows)
    scored = [i for i, r in enumerate(rows) if r.kd_val_acc is not None]
    if not scored:
        return None
    top = max(rows[i].kd_val_acc for i in scored)
    # 1e-9: val accuracies are fractions of whole images; equal ones must not differ by rounding.
    near = [i for i in scored if rows[i].kd_val_acc >= top - spec.pick_tolerance - 1e-9]
    other = next(o for o in spec.objectives if o != "val_acc")
    column = {"latency_ms": "latency_ms", "params": "student_params"}[other]

    def key(i: int) -> tuple[float, float, float, int]:
        cost = getattr(rows[i], column)
        nll = rows[i].kd_val_nll
        return (cost if cost is not None else float("inf"), -rows[i].kd_val_acc,
                nll if nll is not None else float("inf"), i)

    return min(near, key=key)


def write_sweep_files(result: SweepResult, out: Path, spec: SearchSpec | None = None) -> None:
    """sweep.csv (one row per finished point, the pick marked) and sweep.json (validated on read)."""
    fields = [*result.axes, *ROW_COLUMNS, "best"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for i, r in enumerate(result.rows):
        writer.writerow({**r.to_json(), "best": i == result.best})
    write_text(buf.getvalue(), out / "sweep.csv")
    sweep = SweepFile(axes=result.axes, best=result.best, rows=result.rows, warnings=result.warnings,
                      search=spec.model_dump(mode="json") if spec is not None else None, trials=result.trials,
                      pick_rule=result.pick_rule, best_trial=result.best_trial, sweep_id=result.sweep_id)
    write_json(sweep.to_json(), out / "sweep.json", indent=2)
