"""A whole run's results (results.json), its headline numbers, and the reader for every schema version.

Schema versions:
  1  the stages' plain dicts (kdlab before typed results)
  2  the same fields, validated by these models, plus `stages_done` (which stages finished); later
     optional sections (e.g. `teacher_budget`) default to None, so files written without them still read

`read_results` reads both: a version-1 file is upgraded in memory (its finished stages are inferred
from the sections present), so every existing run still opens; the file itself is not rewritten.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import ConfigDict, Field, ValidationError

from core.errors import KdlabError
from core.results.entries import (BudgetReport, CacheCounts, ComparisonRow, ComparisonSummary, DatasetInfo,
                                  DiagnosticsHeader, DroppedTeacher, Entry, EnsembleEntry, StudentEntry, TeacherEntry,
                                  TeachingInfo)

log = logging.getLogger(__name__)

RESULTS_SCHEMA_VERSION = 2
STAGES = ("teachers", "ensembles", "students", "diagnostics", "comparison")  # in the order they run
# What results.json says while and after a run; the store's run status adds queued and interrupted.
ResultsStatus = Literal["running", "done", "failed", "cancelled", "interrupted", "pruned"]


class ResultsError(KdlabError):
    """A results.json (or stored results) cannot be read: damaged, foreign or from a newer kdlab."""


class RunResults(Entry):
    """Everything a run reports; sections appear as their stage finishes (see `stages_done`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: int = RESULTS_SCHEMA_VERSION
    name: str
    status: ResultsStatus = "running"
    stages_done: list[str] = Field(default_factory=list)
    dataset: DatasetInfo
    class_names: list[str] = Field(default_factory=list)
    device: str
    torch: str
    seconds: float = 0.0
    warnings: list[str] = Field(default_factory=list)
    teachers: list[TeacherEntry] = Field(default_factory=list)
    teachers_dropped: list[DroppedTeacher] = Field(default_factory=list)
    logit_cache: CacheCounts | None = None
    ensembles: list[EnsembleEntry] = Field(default_factory=list)
    target_scheme: str | None = None            # the scheme the students learned from (after any fallback)
    teaching: TeachingInfo | None = None
    students: list[StudentEntry] = Field(default_factory=list)
    teacher_budget: BudgetReport | None = None  # teacher passes and accuracy per round
    artifacts: dict[str, str] = Field(default_factory=dict)  # name -> path relative to the run folder
    diagnostics: DiagnosticsHeader | None = None
    comparison: list[ComparisonRow] = Field(default_factory=list)
    summary: ComparisonSummary | None = None

    # -- building -------------------------------------------------------------------------------

    def stage_done(self, stage: str) -> None:
        """Mark a stage finished (idempotent; a resumed run finishes its stages again)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}' (stages: {', '.join(STAGES)})")
        if stage not in self.stages_done:
            self.stages_done = [s for s in STAGES if s in self.stages_done or s == stage]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data, as results.json holds it."""
        return self.model_dump(mode="json", exclude_none=False)

    # -- reading --------------------------------------------------------------------------------

    def scratch(self) -> list[StudentEntry]:
        """Scratch students, in seed order."""
        return [s for s in self.students if s.kind == "scratch"]

    @property
    def last_round(self) -> int | None:
        rounds = [s.round or 1 for s in self.students if s.kind == "kd"]
        return max(rounds) if rounds else None

    def kd(self, round_index: int | None = None) -> list[StudentEntry]:
        """Distilled students of one round (default: the last), in seed order."""
        wanted = self.last_round if round_index is None else round_index
        return [s for s in self.students if s.kind == "kd" and (s.round or 1) == wanted]

    def ensemble(self, scheme: str | None = None) -> EnsembleEntry | None:
        """The entry of `scheme` (default: the students' target), None if it is not there."""
        scheme = scheme or self.target_scheme or (self.summary.target_scheme if self.summary else None)
        return next((e for e in self.ensembles if e.scheme == scheme), None)

    def member_names(self) -> list[str]:
        """Teacher members that kept at least one draw, in config order."""
        return list(dict.fromkeys(t.name for t in self.teachers))

    def best_student(self, kind: str = "kd") -> StudentEntry | None:
        """The seed with the best val accuracy (ties: lower val NLL, then lower seed); never looks at test."""
        pool = self.kd() if kind == "kd" else self.scratch()
        scored = [s for s in pool if s.val_acc is not None]
        if not scored:
            return None
        return max(scored, key=lambda s: (s.val_acc, -(s.val_nll if s.val_nll is not None else float("inf")),
                                          -s.seed))

    @property
    def finished(self) -> bool:
        return self.status == "done" and self.summary is not None

    def headline(self, config: Mapping[str, Any] | None = None) -> dict[str, float]:
        """Headline numbers for run listings (any stage): mean test accuracies and gain recovery."""
        out: dict[str, float] = {}
        if self.teachers:
            out["best_teacher_test_acc"] = max(t.test_acc for t in self.teachers)
        scheme = (self.summary.target_scheme if self.summary else None) or self.target_scheme or \
            ((config or {}).get("ensemble") or {}).get("scheme")
        target = self.ensemble(scheme)
        if target is not None and target.test_acc is not None:
            out["ensemble_test_acc"] = target.test_acc
        scratch, kd = self.scratch(), self.kd()
        if scratch:
            out["scratch_test_acc"] = sum(s.test_acc for s in scratch) / len(scratch)
        if kd:
            out["kd_test_acc"] = sum(s.test_acc for s in kd) / len(kd)
        if self.summary is not None and self.summary.gain_recovery.of_means is not None:
            out["gain_recovery"] = self.summary.gain_recovery.of_means
        return out


HEADLINE_KEYS = ("kd_test_acc", "scratch_test_acc", "ensemble_test_acc", "best_teacher_test_acc", "gain_recovery")


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 results dict as version 2: same sections, `stages_done` inferred from them."""
    data = dict(data)
    present = {"teachers": "teachers", "ensembles": "ensembles", "students": "students",
               "diagnostics": "diagnostics", "comparison": "summary"}
    data["stages_done"] = [stage for stage in STAGES if data.get(present[stage]) is not None
                           and (stage != "teachers" or "logit_cache" in data)]
    data["schema_version"] = RESULTS_SCHEMA_VERSION
    return data


def _field_path(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "results"
    return f"{where}: {first['msg']}"


def read_results(data: Mapping[str, Any] | str | Path, *, where: str = "results") -> RunResults:
    """Validate results (a dict, JSON text or a results.json path) of any schema version.

    Raises ResultsError naming the first bad field, for damaged, foreign or newer files.
    """
    if isinstance(data, Path):
        where = str(data)
        try:
            data = json.loads(data.read_text())
        except OSError as err:
            raise ResultsError(where, f"cannot be read ({err.strerror or err})", "check the run folder") from None
        except ValueError as err:
            raise ResultsError(where, f"is not valid JSON ({err})", "re-run the config to write it again") from None
    elif isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise ResultsError(where, f"is not valid JSON ({err})", "re-run the config to write it again") from None
    if isinstance(data, RunResults):
        return data
    if not isinstance(data, Mapping):
        raise ResultsError(where, f"holds a {type(data).__name__}, not a results mapping",
                           "re-run the config to write it again")
    version = data.get("schema_version")
    if version == 1:
        data = _upgrade_v1(dict(data))
    elif version != RESULTS_SCHEMA_VERSION:
        if isinstance(version, int) and version > RESULTS_SCHEMA_VERSION:
            raise ResultsError(where, f"has schema version {version}; this kdlab reads versions 1 to "
                               f"{RESULTS_SCHEMA_VERSION}", "upgrade kdlab to read it")
        raise ResultsError(where, f"has no known schema_version ({version!r})", "is it a kdlab results.json?")
    try:
        return RunResults.model_validate(data)
    except ValidationError as err:
        raise ResultsError(where, f"is not valid kdlab results ({_field_path(err)})",
                           "re-run the config to write it again; other runs are unaffected") from None


def headline(results: Mapping[str, Any] | RunResults | None, config: Mapping[str, Any] | None = None
             ) -> dict[str, float]:
    """Headline numbers of stored results (any version, any stage); {} when there are none or they are damaged."""
    if not results:
        return {}
    try:
        return read_results(results).headline(config)
    except ResultsError as err:  # a listing still shows the run; opening it names the problem
        log.warning("no headline numbers: %s", err)
        return {}
