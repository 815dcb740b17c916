"""The experiment pipeline: teacher-logit cache, ensembles, students and the comparison table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from core import config
from core.cache import CacheStats, teacher_logits, teacher_view_logits
from core.data import ViewGrid
from core.errors import ConfigError
from core.models import ModelSpec, build_model
from core.pipeline import prepare, run_experiment, teacher_disagreement
from core.report import COLUMNS
from core.results import STAGES, read_results
from core.students import residual_weights

TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]",
        "student.model=test_byobnet", "student.width=null", "student.seeds=2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = config.load(overrides=TINY)
    return out, cfg, run_experiment(prepare(cfg, out), out)


def test_results_schema(tiny_run):
    out, cfg, results = tiny_run
    assert results.status == "done" and results.schema_version == 2 and results.stages_done == list(STAGES)
    assert json.loads((out / "results.json").read_text()) == results.to_json()
    assert read_results(out / "results.json") == results  # what is written reads back as the same model
    schemes = {e.scheme for e in results.ensembles}
    assert {"mean_prob", "mean_logit", "vote", "learned", "uncertainty", "stacking"} <= schemes
    kinds = [(s.kind, s.seed) for s in results.students]
    assert kinds == [("scratch", 0), ("kd", 0), ("scratch", 1), ("kd", 1)]
    methods = [r.method for r in results.comparison]
    assert methods[:2] == ["test_resnet", "test_efficientnet"]
    assert "ensemble/mean_logit" in methods and methods[-2:] == ["student/scratch", "student/kd"]
    for row in results.comparison:
        assert set(COLUMNS) <= set(row.model_dump())
        assert row.params > 0 and row.latency_ms > 0 and row.throughput > 0
    rows = {r.method: r.model_dump() for r in results.comparison}
    # An ensemble costs the sum of its members.
    assert rows["ensemble/mean_logit"]["params"] == rows["test_resnet"]["params"] + rows["test_efficientnet"]["params"]
    assert rows["student/kd"]["seeds"] == 2
    summary = results.summary
    assert summary.target_scheme == "mean_logit"
    assert len(summary.gain_recovery.per_seed) == 2
    # One seed per teacher: the single-run form, and the reason the bias/variance split is missing.
    diag = results.diagnostics.detail()
    assert diag["members"] == ["test_resnet", "test_efficientnet"] and diag["draws"] == 1
    ce = diag["combiners"]["mean_logit"]
    assert ce["terms"]["bias"] is None and "seeds" in ce["reason"]
    assert ce["terms"]["loss"] == pytest.approx(ce["terms"]["member_loss"] - ce["terms"]["diversity"], abs=1e-6)
    assert set(diag["students"]) == {"scratch", "kd"} and diag["students"]["kd"]["seeds"] == 2
    outputs = load_file(str(out / results.artifacts["test_outputs"]))
    n = results.dataset.test
    assert outputs["labels"].shape == (n,) and outputs["teacher/test_resnet/s0"].shape == (n, 4)
    assert outputs["weights/uncertainty"].shape == (n, 2) and outputs["student/kd/s1"].shape == (n, 4)
    assert outputs["gallery/images"].dtype == torch.uint8 and outputs["gallery/images"].shape[0] == 16
    assert (outputs["gallery/disagreement"].diff() <= 0).all()  # most disagreement first


def test_disagreement_is_zero_for_agreeing_draws_and_largest_for_confident_conflict():
    same = torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]])
    conflict = torch.tensor([[[9.0, -9.0]], [[-9.0, 9.0]]])
    assert teacher_disagreement(same).item() == pytest.approx(0.0, abs=1e-6)
    assert teacher_disagreement(conflict).item() == pytest.approx(math.log(2), abs=1e-4)


def test_rerun_reuses_teachers_and_logit_cache(tiny_run):
    out, cfg, first = tiny_run
    again = run_experiment(prepare(cfg, out), out)
    # Two teachers, each with a plain entry and a per-view entry (teaching = views, the default).
    assert first.teaching.mode == "views" and first.teaching.views.views == 50  # 5 x 5 shifts x flip
    assert (first.logit_cache.hits, first.logit_cache.misses) == (0, 4)
    assert (again.logit_cache.hits, again.logit_cache.misses) == (4, 0)
    assert [t.test_acc for t in again.teachers] == [t.test_acc for t in first.teachers]
    assert [t.weights_hash for t in again.teachers] == [t.weights_hash for t in first.teachers]


def test_cache_misses_when_the_teacher_changes(shapes_bundle, tmp_path):
    model = build_model(ModelSpec("test_resnet"), shapes_bundle.num_classes, shapes_bundle.in_chans)
    stats = CacheStats()
    a = teacher_logits(model, "aaaa", shapes_bundle, tmp_path, stats)
    b = teacher_logits(model, "aaaa", shapes_bundle, tmp_path, stats)
    assert (stats.hits, stats.misses) == (1, 1)
    assert all(torch.equal(a[s], b[s]) for s in a)
    assert a["train"].shape == (len(shapes_bundle.train), shapes_bundle.num_classes)
    torch.nn.init.zeros_(next(model.parameters()))
    c = teacher_logits(model, "bbbb", shapes_bundle, tmp_path, stats)
    assert stats.misses == 2 and not torch.equal(a["test"], c["test"])


def test_view_cache_holds_every_view_and_the_plain_one(shapes_bundle, tmp_path):
    model = build_model(ModelSpec("test_resnet"), shapes_bundle.num_classes, shapes_bundle.in_chans)
    grid = ViewGrid.for_data(shapes_bundle.image_size, flip=True, stride=2)
    stats = CacheStats()
    views = teacher_view_logits(model, "aaaa", shapes_bundle, grid, tmp_path, stats)
    assert views.shape == (grid.num_views, len(shapes_bundle.train), shapes_bundle.num_classes)
    plain = teacher_logits(model, "aaaa", shapes_bundle, tmp_path, stats)["train"]
    assert torch.allclose(views[grid.identity], plain, atol=1e-5)
    assert not torch.allclose(views[0], plain, atol=1e-3)  # a shifted view is a different input
    again = teacher_view_logits(model, "aaaa", shapes_bundle, grid, tmp_path, stats)
    assert torch.equal(again, views) and (stats.hits, stats.misses) == (1, 2)
    other = teacher_view_logits(model, "aaaa", shapes_bundle, ViewGrid.for_data(16, flip=False), tmp_path, stats)
    assert other.shape[0] == 25 and stats.misses == 3  # another grid is another entry


def test_residual_weights_favour_what_the_student_gets_wrong():
    target = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])
    student = torch.tensor([[3.0, -3.0], [-3.0, 3.0], [-3.0, 3.0]])  # wrong on example 1 only
    w = residual_weights(target, student)
    assert w[1] > w[0] and w[1] > w[2]
    assert w.mean().item() == pytest.approx(1.0)
    assert (w > 0).all()


def test_unknown_scheme_or_loss_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="ensemble.scheme"):
        prepare(config.load(overrides=TINY + ["ensemble.scheme=median"]))
    with pytest.raises(ConfigError, match="distill.loss"):
        prepare(config.load(overrides=TINY + ["distill.loss=nope"]))


def test_student_larger_than_a_teacher_is_warned():
    prep = prepare(config.load(overrides=TINY + ["student.model=resnet18"]))
    assert any(w.startswith("student.model") for w in prep.warnings)


def test_residual_rounds_are_reported_one_row_each(tmp_path):
    cfg = config.load(overrides=TINY + ["student.seeds=1", "distill.rounds=2", "train.epochs=1",
                                        "teachers=[{model: test_resnet}]"])
    results = run_experiment(prepare(cfg, tmp_path), tmp_path)
    assert [(s.kind, s.round) for s in results.students] == [("scratch", None), ("kd", 1), ("kd", 2)]
    methods = [r.method for r in results.comparison]
    assert methods[-2:] == ["student/kd-round1", "student/kd-round2"]


@pytest.mark.parametrize("teaching", ["cached", "live"])
def test_every_teaching_mode_runs_end_to_end(tmp_path, teaching):
    cfg = config.load(overrides=TINY + ["student.seeds=1", "train.epochs=1", "teachers=[{model: test_resnet}]",
                                        f"distill.teaching={teaching}", "ensemble.scheme=learned"])
    results = run_experiment(prepare(cfg, tmp_path), tmp_path)
    assert results.status == "done" and results.teaching.mode == teaching
    assert results.teaching.views is None
    assert results.logit_cache.misses == 1  # the plain entry only
    assert [s.kind for s in results.students] == ["scratch", "kd"]


def test_a_scheme_that_cannot_be_fitted_falls_back_with_a_warning(tmp_path):
    cfg = config.load(overrides=TINY + ["student.seeds=1", "train.epochs=1", "teachers=[{model: test_resnet}]",
                                        "data.val_fraction=0.02", "ensemble.scheme=stacking",
                                        "distill.teaching=cached"])
    results = run_experiment(prepare(cfg, tmp_path), tmp_path)
    assert results.status == "done"
    errors = {e.scheme: e.error for e in results.ensembles}
    assert "data.val_fraction" in errors["stacking"] and errors["mean_logit"] is None
    assert results.target_scheme == results.summary.target_scheme == "mean_logit"
    assert any(w.startswith("ensemble.scheme: 'stacking' could not be fitted") for w in results.warnings)


def test_a_diverged_teacher_is_left_out_and_the_run_goes_on(tmp_path):
    from safetensors.torch import save_file
    spec = ModelSpec("test_efficientnet")
    broken = build_model(spec, 4, 1)
    # Finite but huge weights pass the up-front checks and overflow fp32 in the first forward.
    huge = {k: torch.full_like(v, 1e30) if v.is_floating_point() else v for k, v in broken.state_dict().items()}
    save_file(huge, str(tmp_path / "diverged.safetensors"))
    cfg = config.load(overrides=TINY + [
        "student.seeds=1", "train.epochs=1", "distill.teaching=cached",
        f"teachers=[{{model: test_resnet}}, {{model: test_efficientnet, weights_file: '{tmp_path / 'diverged.safetensors'}'}}]"])
    out = tmp_path / "run"
    results = run_experiment(prepare(cfg, out), out)
    assert results.status == "done"
    assert [t.name for t in results.teachers] == ["test_resnet"]
    dropped = results.teachers_dropped[0]
    assert dropped.name == "test_efficientnet" and ("non-finite" in dropped.error or "loss" in dropped.error)
    assert any("left out of the ensemble" in w for w in results.warnings)
    methods = [r.method for r in results.comparison]
    assert "test_efficientnet" not in methods and "test_resnet" in methods
    assert results.ensemble("mean_logit").members == 1


def test_bagging_draws_give_the_full_decomposition(tmp_path):
    cfg = config.load(overrides=TINY + ["student.seeds=1", "train.epochs=1", "distill.teaching=cached",
                                        "teachers=[{model: test_resnet, seeds: 2}]", "ensemble.draws=bootstrap"])
    prep = prepare(cfg, tmp_path)
    assert "full bias-variance-diversity decomposition over 2 draws per teacher (bootstrap" in prep.decomposition_plan
    results = run_experiment(prep, tmp_path)
    ce = results.diagnostics.combiners["mean_logit"]
    assert ce["reason"] in (None, "") and ce["terms"]["bias"] is not None
    t = ce["terms"]
    assert t["loss"] == pytest.approx(t["bias"] + t["variance"] - t["diversity"], abs=1e-6)


def test_the_plan_says_what_a_full_decomposition_costs():
    prep = prepare(config.load(overrides=TINY))
    assert "teachers.*.seeds=2 (4 teacher trainings instead of 2)" in prep.decomposition_plan


def test_bootstrap_resamples_train_with_replacement(shapes_bundle):
    a, b = shapes_bundle.bootstrap(1), shapes_bundle.bootstrap(2)
    n = len(shapes_bundle.train)
    assert len(a.train) == n and a.val is shapes_bundle.val and a.test is shapes_bundle.test
    rows = a.train.source_index.tolist()
    assert len(set(rows)) < n  # drawn with replacement: some rows repeat, some are left out
    assert rows != b.train.source_index.tolist()
    assert torch.equal(shapes_bundle.bootstrap(1).train.y, a.train.y)  # seeded
