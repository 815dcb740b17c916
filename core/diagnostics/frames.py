"""Tidy (long-format) pandas frames of a diagnose() dict, one row per plotted value, for the dashboard."""

from __future__ import annotations

import math

import pandas as pd

from core.diagnostics.terms import Decomposition

TERM_COLUMNS = ["subject", "combiner", "loss_name", "term", "class", "class_index", "value"]
PER_DRAW_COLUMNS = ["subject", "combiner", "draw", "term", "value"]
GROWTH_COLUMNS = ["members", "added", "term", "value"]
PAIRWISE_COLUMNS = ["metric", "member_a", "member_b", "value"]
RELIABILITY_COLUMNS = ["subject_kind", "subject", "combiner", "bin", "bin_lower", "bin_upper", "confidence",
                       "accuracy", "count"]
BIN_FIELDS = RELIABILITY_COLUMNS[4:]
MEMBER_COLUMNS = ["member", "metric", "value"]
EXAMPLE_COLUMNS = ["example", "label", "combiner", "term", "value"]


def _subjects(diag: dict) -> list[tuple[str, dict]]:
    """(subject, combiners) pairs: the ensemble first, then each student."""
    students = [(name, s["combiners"]) for name, s in diag["students"].items()]
    return [("ensemble", diag["combiners"])] + students


def _reliability_subjects(cal: dict) -> list[tuple[str, str, str, dict]]:
    """(subject_kind, subject, combiner, bins): each ensemble combiner, then each member and student (pooled)."""
    ensembles = [("ensemble", "ensemble", combiner, bins) for combiner, bins in cal.items()
                 if isinstance(bins, dict) and "count" in bins]
    members = [("member", name, "pooled", bins) for name, bins in cal.get("members", {}).items()]
    students = [("student", name, "pooled", bins) for name, bins in cal.get("students", {}).items()]
    return ensembles + members + students


def _term_rows(diag: dict) -> list[dict]:
    rows = []
    for subject, combiners in _subjects(diag):
        for combiner, dec in combiners.items():
            for term, value in dec["terms"].items():
                if value is None:  # not estimable in this run; the dict's `reason` says why
                    continue
                base = {"subject": subject, "combiner": combiner, "loss_name": dec["loss_name"], "term": term}
                rows.append({**base, "class": "all", "class_index": -1, "value": value})
                for c, v in enumerate(dec["per_class"][term]):
                    if v is not None:
                        rows.append({**base, "class": diag["class_names"][c], "class_index": c, "value": v})
    return rows


def to_frames(diag: dict) -> dict[str, pd.DataFrame]:
    """Frames terms, per_draw, growth, pairwise, reliability, members (columns in the *_COLUMNS constants).

    terms: test mean (class "all", class_index -1) and per-class mean of every estimable term, for
    the ensemble (subject "ensemble") and each student (subject = its name).
    reliability: one row per bin; subject_kind "ensemble" (subject "ensemble", combiner mean_logit or
    mean_prob), "member" or "student" (subject = its name, combiner "pooled": its draws or seeds pooled).
    """
    per_draw = [{"subject": subject, "combiner": combiner, "draw": i, "term": term, "value": v}
                for subject, combiners in _subjects(diag) for combiner, dec in combiners.items()
                for term, values in dec["per_draw"].items() for i, v in enumerate(values)]
    growth = [{"members": r["members"], "added": r["added"], "term": term, "value": r[term]}
              for r in diag["growth"]["rows"] for term in r if term not in ("members", "added")
              and r[term] is not None]
    pair = diag["pairwise"]
    pairwise = [{"metric": metric, "member_a": a, "member_b": b,
                 "value": math.nan if pair[metric][i][j] is None else pair[metric][i][j]}
                for metric in ("error_correlation", "disagreement")
                for i, a in enumerate(pair["members"]) for j, b in enumerate(pair["members"])]
    reliability = [{"subject_kind": kind, "subject": subject, "combiner": combiner, "bin": b,
                    **{c: bins[c][b] for c in BIN_FIELDS}}
                   for kind, subject, combiner, bins in _reliability_subjects(diag["calibration"])
                   for b in range(len(bins["count"]))]
    members = [{"member": r["name"], "metric": metric, "value": r[metric]}
               for r in diag["member_scores"] for metric in ("test_nll", "test_acc", "test_ece", "val_nll")
               if r[metric] is not None]
    frame = pd.DataFrame
    return {"terms": frame(_term_rows(diag), columns=TERM_COLUMNS),
            "per_draw": frame(per_draw, columns=PER_DRAW_COLUMNS),
            "growth": frame(growth, columns=GROWTH_COLUMNS),
            "pairwise": frame(pairwise, columns=PAIRWISE_COLUMNS),
            "reliability": frame(reliability, columns=RELIABILITY_COLUMNS).astype({"confidence": float,
                                                                                   "accuracy": float}),
            "members": frame(members, columns=MEMBER_COLUMNS)}


def per_example_frame(decomps: dict[str, Decomposition], y) -> pd.DataFrame:
    """Long frame of every per-example term (columns EXAMPLE_COLUMNS) from decompose(); not for the JSON."""
    parts = []
    for combiner, dec in decomps.items():
        for term, values in dec.per_example.items():
            parts.append(pd.DataFrame({"example": range(values.numel()), "label": y.tolist(),
                                       "combiner": combiner, "term": term, "value": values.numpy()}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EXAMPLE_COLUMNS)
