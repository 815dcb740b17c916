"""Typed results: round-trips, reading version-1 files, refusing damaged ones, headline numbers, sweep files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from core.errors import KdlabError
from core.results import RESULTS_SCHEMA_VERSION, STAGES, ResultsError, StudentEntry, headline, read_results
from core.results.sweep import read_sweep_file

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def v1() -> dict:
    """A results.json written by kdlab before typed results (schema version 1): 3 draws, 2 rounds, 2 seeds."""
    return json.loads((FIXTURES / "results_v1.json").read_text())


def test_a_version_1_file_opens_with_every_section(v1):
    results = read_results(FIXTURES / "results_v1.json")
    assert results.schema_version == RESULTS_SCHEMA_VERSION == 2
    assert results.stages_done == list(STAGES)  # a finished v1 run: every stage's section is there
    assert [t.source for t in results.teachers] == ["teacher/test_resnet/s0", "teacher/test_resnet/s1",
                                                    "teacher/test_efficientnet/s0"]
    assert [(s.kind, s.round, s.seed) for s in results.students] == [
        ("scratch", None, 0), ("kd", 1, 0), ("kd", 2, 0), ("scratch", None, 1), ("kd", 1, 1), ("kd", 2, 1)]
    assert results.last_round == 2 and [s.seed for s in results.kd()] == [0, 1]
    assert results.comparison[0].method == "test_resnet" and results.summary.target_scheme == "mean_logit"
    assert results.teaching.views.views == 50 and results.ensemble("learned").global_weights is not None
    assert results.diagnostics.computed and results.diagnostics.detail()["class_counts"] == \
        v1["diagnostics"]["class_counts"]  # the untyped detail is kept as computed


def test_round_trip_through_json_keeps_everything(v1):
    results = read_results(v1)
    again = read_results(json.dumps(results.to_json()))
    assert again == results
    # The version-2 file holds the version-1 fields unchanged, plus what version 2 adds (teacher_budget: null
    # for a file written before distill.teacher_budget).
    written = results.to_json()
    assert set(written) == set(v1) | {"stages_done", "teacher_budget"} and written["teacher_budget"] is None
    assert written["teachers"] == v1["teachers"] and written["comparison"] == v1["comparison"]


def test_a_partial_version_1_file_says_which_stages_finished(v1):
    partial = {k: v1[k] for k in ("schema_version", "name", "dataset", "class_names", "device", "torch", "status",
                                  "warnings", "teachers", "teachers_dropped", "logit_cache", "seconds")}
    partial["status"] = "failed"
    results = read_results(partial)
    assert results.stages_done == ["teachers"] and results.summary is None and not results.finished
    assert results.headline() == {"best_teacher_test_acc": max(t["test_acc"] for t in v1["teachers"])}


def test_headline_is_the_mean_of_the_last_round_and_the_target_ensemble(v1):
    kd = [s["test_acc"] for s in v1["students"] if s["kind"] == "kd" and s["round"] == 2]
    scratch = [s["test_acc"] for s in v1["students"] if s["kind"] == "scratch"]
    target = next(e for e in v1["ensembles"] if e["scheme"] == "mean_logit")
    assert headline(v1) == pytest.approx({
        "kd_test_acc": sum(kd) / 2, "scratch_test_acc": sum(scratch) / 2, "ensemble_test_acc": target["test_acc"],
        "best_teacher_test_acc": max(t["test_acc"] for t in v1["teachers"]),
        "gain_recovery": v1["summary"]["gain_recovery"]["of_means"]})
    assert headline(None) == {} and headline({"schema_version": 2}) == {}  # damaged: nothing, logged


def test_the_best_student_is_picked_on_val_never_on_test(v1):
    results = read_results(v1)
    kd = results.kd()
    # Make seed 0 the best on test and seed 1 the best on val: the pick must follow val.
    results.students = [s.model_copy(update={"test_acc": 0.99, "val_acc": 0.1}) if s in kd[:1] else
                        s.model_copy(update={"test_acc": 0.01, "val_acc": 0.9}) if s in kd[1:] else s
                        for s in results.students]
    assert results.best_student().seed == 1
    assert results.best_student("scratch").kind == "scratch"


@pytest.mark.parametrize("damage, field", [
    (lambda d: d["teachers"][0].pop("test_acc"), "teachers.0.test_acc"),
    (lambda d: d["students"][0].update(kind="teacher"), "students.0.kind"),
    (lambda d: d["comparison"][0].update(paramz=1), "comparison.0.paramz"),
    (lambda d: d.update(status="exploded"), "status"),
])
def test_damaged_results_are_refused_naming_the_field(v1, damage, field):
    bad = copy.deepcopy(v1)
    damage(bad)
    with pytest.raises(ResultsError) as err:
        read_results(bad)
    assert field in str(err.value) and isinstance(err.value, KdlabError)


def test_foreign_and_newer_files_are_refused(v1, tmp_path):
    with pytest.raises(ResultsError, match="newer|upgrade"):
        read_results({**v1, "schema_version": 3})
    with pytest.raises(ResultsError, match="schema_version"):
        read_results({"hello": "world"})
    with pytest.raises(ResultsError, match="not a results mapping"):
        read_results([1, 2])
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        read_results(path)


def test_stage_done_keeps_stage_order():
    results = read_results(json.loads((FIXTURES / "results_v1.json").read_text()))
    results.stages_done = []
    results.stage_done("students")
    results.stage_done("teachers")
    results.stage_done("teachers")
    assert results.stages_done == ["teachers", "students"]
    with pytest.raises(ValueError, match="unknown stage"):
        results.stage_done("export")


def test_student_names_match_the_test_outputs_keys():
    s = StudentEntry(kind="kd", round=2, seed=1, test_acc=0.5, test_nll=1.0, test_ece=0.1, train_seconds=1.0,
                     best_epoch=1, weights="students/kd-r2_s1/model.safetensors")
    assert s.model_name == "student/kd/s1" and s.label == "kd-r2"


def test_a_sweep_row_without_its_axis_value_is_refused(tmp_path, sweep_row):
    row = sweep_row(0.5).model_dump()
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"axes": ["distill.alpha"], "best": 0, "rows": [row]}))
    with pytest.raises(KdlabError, match="no value for the axis distill.alpha"):
        read_sweep_file(path)
    path.write_text(json.dumps({"axes": ["distill.alpha"], "best": 0, "rows": [{**row, "distill.alpha": 0.5}]}))
    assert read_sweep_file(path).rows[0].value("distill.alpha") == 0.5


@pytest.mark.parametrize("content, message", [
    ({}, "axes"), ([], "not a mapping"), ({"axes": ["distill.alpha"], "best": None, "rows": [{"point": "x"}]},
                                          "rows.0.kd_val_acc"),
])
def test_malformed_sweep_files_name_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(content))
    with pytest.raises(KdlabError) as err:
        read_sweep_file(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_each_run_folder_keeps_its_own_log(tmp_path):
    import logging
    import threading

    from core.runlog import LOG_NAME, run_log

    other = logging.getLogger("core.other")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ready, done = threading.Event(), threading.Event()

    def second_run() -> None:
        with run_log(b):
            other.warning("from run b")
            ready.set()
            done.wait(5)

    thread = threading.Thread(target=second_run)
    thread.start()
    with run_log(a):
        ready.wait(5)
        other.info("from run a")
        done.set()
    thread.join()
    logging.getLogger("core.other").warning("after both runs")
    assert "from run a" in (a / LOG_NAME).read_text() and "from run b" not in (a / LOG_NAME).read_text()
    assert "from run b" in (b / LOG_NAME).read_text() and "from run a" not in (b / LOG_NAME).read_text()
    assert "after both runs" not in (a / LOG_NAME).read_text()
