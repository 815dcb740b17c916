"""diagnose(): every diagnostic of one experiment's test logits as one small JSON-ready dict."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor

from core.diagnostics.calibration import calibration, ece_many, pooled_calibration
from core.diagnostics.crossentropy import true_class
from core.diagnostics.decompose import decompose_checked
from core.diagnostics.growth import check_order, growth_from_log_probs, member_nll, order_from_nll
from core.diagnostics.inputs import as_draws, as_labels, as_seeds, log_probs
from core.diagnostics.pairwise import disagreement_from_predictions, error_correlation_from_predictions
from core.diagnostics.terms import STUDENT_FIX, draws_reason
from core.errors import ConfigError

SCHEMA_VERSION = 1


def _num(x: float) -> float | None:
    """A JSON-safe number: None for NaN (strict JSON has no NaN)."""
    return None if math.isnan(x) else float(x)


def _matrix(t: Tensor) -> list[list[float | None]]:
    return [[_num(v) for v in row] for row in t.tolist()]


def _students(students: Mapping[str, Tensor | Sequence[Tensor]], y: Tensor, k: int,
              n_bins: int) -> tuple[dict, dict]:
    """Each student's decompositions over its seeds (M = 1, D = S) and its ECE, mean over seeds;
    and each student's reliability bins with its seeds pooled (see pooled_calibration)."""
    out, cal = {}, {}
    for name, logits in students.items():
        z = as_seeds(logits, f"student ({name})")  # (1, S, N, K)
        if tuple(z.shape[2:]) != (y.numel(), k):
            raise ConfigError("student", f"student '{name}' logits have shape {tuple(z.shape[2:])} per seed, "
                              f"the test split ({y.numel()}, {k})", "pass the student's test-split logits")
        log_q = log_probs(z)
        reason = draws_reason(z.shape[1], "student", STUDENT_FIX)
        decomps = decompose_checked(log_q, z.argmax(dim=-1), y)
        out[name] = {"seeds": z.shape[1], "reason": reason,
                     "combiners": {c: {**dec.to_dict(y, k), "reason": reason} for c, dec in decomps.items()},
                     "test_ece": float(ece_many(log_q[0].exp(), y, n_bins).mean())}
        cal[name] = pooled_calibration(log_q[0].exp(), y, n_bins)
    return out, cal


def diagnose(member_logits: Tensor | Sequence[Sequence[Tensor]], y: Tensor, *, member_names: Sequence[str],
             val_logits: Tensor | Sequence[Sequence[Tensor]] | None = None, val_y: Tensor | None = None,
             students: Mapping[str, Tensor | Sequence[Tensor]] | None = None,
             order: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
             n_bins: int = 15) -> dict:
    """Decompositions, diversity growth, pairwise errors, calibration and student spread as a JSON-ready dict.

    member_logits: (M, D, N, K), (M, N, K) or one list of per-draw (N, K) tensors per member (see
    group_member_major for a flat member-major list). y: (N,) test labels. val_logits, val_y: order
    the growth curve by val NLL (else `order`, else the given member order). students: name ->
    (S, N, K) or a list of S per-seed (N, K) test logits, e.g. {"kd": ..., "scratch": ...}.
    calibration: reliability bins and ECE of each ensemble combiner (mean_logit, mean_prob), of each
    member (calibration.members[name], its draws pooled) and of each student (calibration.students[name],
    its seeds pooled).
    """
    z, note = as_draws(member_logits)
    m, d, n, k = z.shape
    y = as_labels(y, n, k)
    names = [str(s) for s in member_names]
    if len(names) != m:
        raise ConfigError("teachers", f"{len(names)} member names for {m} members", "name every member once")
    classes = [str(c) for c in class_names] if class_names is not None else [str(c) for c in range(k)]
    if len(classes) != k:
        raise ConfigError("data", f"{len(classes)} class names for {k} classes", "name every class once")

    val_nll = None
    if val_logits is not None:
        if val_y is None:
            raise ConfigError("data.val_fraction", "val logits were given without val labels",
                              "pass val_y with val_logits")
        zv, _ = as_draws(val_logits)
        if zv.shape[0] != m or zv.shape[3] != k:
            raise ConfigError("teachers", f"val logits have {zv.shape[0]} members and {zv.shape[3]} classes, "
                              f"test logits {m} and {k}", "pass the val logits of the same members")
        val_nll = member_nll(zv, val_y)
    if order is not None:
        order, by = check_order(order, m), "given"
    elif val_nll is not None:
        order, by = order_from_nll(val_nll), "val_nll"
    else:
        order, by = list(range(m)), "member_order"

    # One log-softmax and one argmax serve every diagnostic below.
    log_q = log_probs(z)
    pred = z.argmax(dim=-1)
    decomps = decompose_checked(log_q, pred, y)
    growth = growth_from_log_probs(log_q, y, order)
    for row in growth:
        row["added"] = names[row["added"]]
    # Calibration of the ensemble as reported elsewhere: every member draw is one run of the ensemble.
    ensemble_probs = {"mean_logit": log_q.mean(dim=(0, 1)).softmax(-1),
                      "mean_prob": log_q.exp().mean(dim=(0, 1))}
    test_nll = -true_class(log_q, y).mean(dim=(1, 2))
    test_acc = (pred == y).to(torch.float64).mean(dim=(1, 2))
    test_ece = ece_many(log_q.flatten(0, 1).exp(), y, n_bins).view(m, d).mean(dim=1)
    student_diag, student_cal = _students(students or {}, y, k, n_bins)
    return {
        "version": SCHEMA_VERSION,
        "members": names, "draws": d, "examples": n, "classes": k, "class_names": classes,
        "class_counts": torch.bincount(y, minlength=k).tolist(),
        "reason": decomps["mean_logit"].reason, "note": note,
        "combiners": {c: dec.to_dict(y, k) for c, dec in decomps.items()},
        "growth": {"by": by, "order": [names[i] for i in order], "rows": growth},
        "pairwise": {"members": names, "pairing": "draw d with draw d, mean over draws",
                     "error_correlation": _matrix(error_correlation_from_predictions(pred, y)),
                     "disagreement": _matrix(disagreement_from_predictions(pred))},
        "calibration": {"ensemble": "all members x draws", "n_bins": n_bins,
                        **{c: calibration(p, y, n_bins) for c, p in ensemble_probs.items()},
                        # each member's draws and each student's seeds pooled into one set of bins
                        "pooled": "members: all draws concatenated; students: all seeds concatenated",
                        "members": {name: pooled_calibration(log_q[i].exp(), y, n_bins)
                                    for i, name in enumerate(names)},
                        "students": student_cal},
        "member_scores": [{"name": name, "test_nll": float(test_nll[i]), "test_acc": float(test_acc[i]),
                           "test_ece": float(test_ece[i]),
                           "val_nll": float(val_nll[i]) if val_nll is not None else None}
                          for i, name in enumerate(names)],
        "students": student_diag,
    }
