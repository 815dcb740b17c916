"""Student sweeps: axes parse and are checked, teachers and scratch students train once, rows and the
val-based pick are right, and a rerun resumes without training anything."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from core import config
from core.cli import main
from core.errors import ConfigError, KdlabError
from core.sweep import (best_row, find_sweeps, grid_points, load_sweep, parse_axis, point_config, point_raw_config,
                        run_sweep)
from core.train import EventBus

TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]",
        "student.model=test_byobnet", "student.width=null", "student.seeds=2"]


def test_parse_axis_values_and_grid_order():
    t = parse_axis("distill.temperature=1, 2.5,4")
    assert t.field == "distill.temperature" and t.values == (1, 2.5, 4)
    points = grid_points([t, parse_axis("distill.loss=hinton,dkd")])
    assert len(points) == 6
    assert points[0] == {"distill.temperature": 1, "distill.loss": "hinton"}
    assert points[1] == {"distill.temperature": 1, "distill.loss": "dkd"}  # the last axis varies fastest


@pytest.mark.parametrize("text, field", [
    ("train.lr=0.1,0.2", "train.lr"),           # would retrain the teachers
    ("teachers.0.model=resnet18", "teachers.0.model"),
    ("distill.rounds=1,2", "distill.rounds"),
    ("student.seeds=3", "student.seeds"),
    ("distill.temperature", "--grid"),           # no values
    ("distill.temperature=", "distill.temperature"),
])
def test_bad_axes_name_the_field(text, field):
    with pytest.raises(ConfigError) as err:
        parse_axis(text)
    assert err.value.field == field


def test_a_repeated_axis_and_an_out_of_range_value_are_refused():
    with pytest.raises(ConfigError, match="twice"):
        grid_points([parse_axis("distill.alpha=0.5"), parse_axis("distill.alpha=1")])
    base = config.load(overrides=TINY)
    with pytest.raises(ConfigError) as err:
        point_config(base, {"distill.alpha": 1.5})
    assert err.value.field == "distill.alpha" and "grid point" in str(err.value)
    before = base.to_dict()
    cfg = point_config(base, {"distill.temperature": 3, "student.lr": 0.05}, seeds=3)
    assert (cfg.distill.temperature, cfg.student.lr, cfg.student.seeds) == (3, 0.05, 3)
    assert base.to_dict() == before  # the base config is not modified


def test_a_bad_point_fails_before_any_teacher_trains(tmp_path):
    base = config.load(overrides=TINY)
    starts = Starts()
    with pytest.raises(KdlabError) as err:
        run_sweep(base, [parse_axis("student.model=test_byobnet,no_such_net_xyz")], tmp_path / "s",
                  events=EventBus(starts))
    assert err.value.field == "student.model" and "no_such_net_xyz" in str(err.value)
    assert starts.fresh == [] and not (tmp_path / "s" / "teachers").exists()


def test_best_row_is_by_val_accuracy_only(sweep_row):
    rows = [sweep_row(0.90, 0.99), sweep_row(0.95, 0.80), sweep_row(0.95, 0.85), sweep_row(None)]
    assert best_row(rows) == 1  # the earlier of the tied points, whatever test says
    rows[1].kd_val_nll, rows[2].kd_val_nll = 0.20, 0.10
    assert best_row(rows) == 2  # a tie in val accuracy goes to the lower val NLL
    assert best_row([sweep_row(None)]) is None


class Starts:
    """Counts the models whose training started from step 0, per kind of source."""

    def __init__(self) -> None:
        self.fresh: list[str] = []

    def __call__(self, event) -> None:
        if event.kind == "start" and event.epoch == 0:
            self.fresh.append(event.source)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    base = config.load(overrides=TINY + ["distill.teaching=cached"])
    axes = [parse_axis("distill.temperature=1,4"), parse_axis("distill.alpha=0.5")]
    starts = Starts()
    result = run_sweep(base, axes, out, seeds=2, events=EventBus(starts))
    return out, base, axes, result, starts


def test_sweep_trains_teachers_and_scratch_students_once(tiny_sweep):
    out, base, axes, result, starts = tiny_sweep
    teachers = [s for s in starts.fresh if s.startswith("teacher/")]
    scratch = [s for s in starts.fresh if s.startswith("student/scratch")]
    kd = [s for s in starts.fresh if s.startswith("student/kd")]
    assert len(teachers) == 2                # one draw per teacher, for both points
    assert len(scratch) == 2                 # one per seed: the points differ in distillation only
    assert len(kd) == 2 * 2                  # every point trains its own distilled students


def test_sweep_rows_and_files(tiny_sweep):
    out, base, axes, result, starts = tiny_sweep
    assert [r.value("distill.temperature") for r in result.rows] == [1, 4]
    assert result.axes == ["distill.temperature", "distill.alpha"]
    for r in result.rows:
        assert r.seeds == 2 and 0.0 <= r.kd_test_acc_mean <= 1.0 and 0.0 <= r.kd_val_acc <= 1.0
        assert r.paired_gain_mean == pytest.approx(r.kd_test_acc_mean - r.scratch_test_acc_mean)
    # The same scratch students serve every point.
    assert result.rows[0].scratch_test_acc_mean == result.rows[1].scratch_test_acc_mean
    assert result.best == best_row(result.rows)
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["best"] for row in table].count("True") == 1
    assert float(table[0]["kd_test_acc_mean"]) == pytest.approx(result.rows[0].kd_test_acc_mean)
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["axes"] == result.axes and len(saved["rows"]) == 2
    assert (out / "config.yaml").is_file() and (out / "search.json").is_file()


def test_sweep_rerun_resumes_and_other_axes_are_refused(tiny_sweep):
    out, base, axes, result, _ = tiny_sweep
    starts = Starts()
    again = run_sweep(base, axes, out, seeds=2, events=EventBus(starts))
    assert starts.fresh == []  # every teacher and student resumed from its finished checkpoint
    assert [r.kd_test_acc_mean for r in again.rows] == [r.kd_test_acc_mean for r in result.rows]
    with pytest.raises(KdlabError, match="another space"):
        run_sweep(base, [parse_axis("distill.temperature=2")], out, seeds=2)


def test_cli_sweep_prints_the_table_and_the_pick(tiny_sweep):
    out, *_ = tiny_sweep
    args = ["sweep", *sum((["--set", o] for o in TINY + ["distill.teaching=cached"]), []),
            "--grid", "distill.temperature=1,4", "--grid", "distill.alpha=0.5", "--seeds", "2",
            "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "paired gain" in result.output and "* picked trial" in result.output
    assert "pick rule: the best val accuracy" in result.output
    assert "--set distill.temperature=" in result.output
    bad = CliRunner().invoke(main, ["sweep", "--grid", "train.epochs=1,2", "--out", str(out)])
    assert bad.exit_code == 2 and "train.epochs" in bad.output


def test_load_sweep_and_a_point_back_as_a_config(tiny_sweep, tmp_path):
    out, base, axes, result, _ = tiny_sweep
    sweep = load_sweep(out)
    assert sweep.file.best == result.best and sweep.config == base.to_dict()
    raw = point_raw_config(sweep, 1)
    cfg = config.validate(raw)
    assert (cfg.distill.temperature, cfg.distill.alpha) == (4, 0.5)
    assert cfg.teachers == base.teachers and sweep.config["distill"] == base.to_dict()["distill"]
    with pytest.raises(KdlabError, match="no sweep.json"):
        load_sweep(tmp_path)


def test_sweep_chart_marks_the_pick_and_draws_the_ensemble(tiny_sweep):
    from dashboard import figures
    _, _, _, result, _ = tiny_sweep
    rows = [r.to_json() for r in result.rows]
    fig = figures.sweep_chart(rows, result.best)
    names = [t.name for t in fig.data]
    assert names == ["KD student", "scratch student", "best by KD val accuracy"]
    assert list(fig.data[0].error_y.array) == [r.kd_test_acc_std for r in result.rows]
    assert fig.data[2].x[0] == result.rows[result.best].point  # no axes given: the full point text
    short = figures.sweep_chart(rows, result.best, result.axes)
    assert list(short.data[0].x) == ["temperature=1 alpha=0.5", "temperature=4 alpha=0.5"]
    assert any("ensemble" in a.text for a in fig.layout.annotations)
    assert figures.is_empty(figures.sweep_chart([]))
    with pytest.raises(ValueError, match="kd_test_acc_mean"):
        figures.sweep_chart([{"point": "x"}])


def test_find_sweeps_newest_first(tiny_sweep, tmp_path):
    out, *_ = tiny_sweep
    for name in ("sweep-a", "sweep-b"):
        (tmp_path / name).mkdir()
        shutil.copy(out / "sweep.json", tmp_path / name / "sweep.json")
    (tmp_path / "a-run").mkdir()  # no sweep.json: not a sweep
    os.utime(tmp_path / "sweep-a" / "sweep.json", (1e9, 1e9))  # the older one
    assert find_sweeps(tmp_path) == [tmp_path / "sweep-b", tmp_path / "sweep-a"]
    assert find_sweeps(tmp_path / "missing") == []


def test_compare_page_shows_a_sweep_folder(tiny_sweep, run_store_dir, tmp_path):
    from streamlit.testing.v1 import AppTest
    out, *_ = tiny_sweep
    listed = run_store_dir / "sweep-listed"
    listed.mkdir(exist_ok=True)
    for name in ("sweep.json", "config.yaml"):
        shutil.copy(out / name, listed / name)
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "dashboard" / "views" / "compare.py"),
                            default_timeout=60)
    at.run()
    assert str(listed) in at.selectbox(key="sweep_found").options
    at.selectbox(key="sweep_found").set_value(str(listed)).run()
    assert at.text_input(key="sweep_dir").value == str(listed)
    assert not at.exception, at.exception
    assert any(json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Sweep")
               for c in at.get("plotly_chart"))
    assert list(at.dataframe[0].value["point"]) == [r.point for r in tiny_sweep[3].rows]
    at.text_input(key="sweep_dir").set_value(str(tmp_path)).run()
    assert any("no sweep.json" in e.value for e in at.error)


def test_cli_sweep_without_out_writes_into_the_store_folder(tmp_path):
    args = ["sweep", *sum((["--set", o] for o in TINY + ["distill.teaching=cached", "train.epochs=1"]), []),
            "--grid", "distill.temperature=2", "--seeds", "1", "--store", str(tmp_path), "--quiet"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (folder,) = find_sweeps(tmp_path)
    assert folder.name.startswith("sweep-") and str(folder) in result.output


def test_an_unfittable_scheme_point_falls_back_with_a_warning_and_more_seeds_reuse_the_earlier(tmp_path):
    base = config.load(overrides=TINY + ["student.seeds=1", "train.epochs=1", "teachers=[{model: test_resnet}]",
                                         "data.val_fraction=0.02", "distill.teaching=cached"])
    axes = [parse_axis("ensemble.scheme=mean_logit,stacking")]
    result = run_sweep(base, axes, tmp_path, seeds=1)
    assert [w for w in result.warnings if "'stacking' could not be fitted" in w]
    assert json.loads((tmp_path / "sweep.json").read_text())["warnings"] == result.warnings
    # Both points learned from mean_logit: the same target, so the same students.
    assert result.rows[0].kd_test_acc_mean == result.rows[1].kd_test_acc_mean
    starts = Starts()
    run_sweep(base, axes, tmp_path, seeds=2, events=EventBus(starts))
    assert sorted(starts.fresh) == ["student/kd-r1/s1"] * 2 + ["student/scratch/s1"]  # only seed 1 is new
