"""The experiment pipeline: teacher-logit cache, ensembles, students and the comparison table."""

from __future__ import annotations

import json

import pytest
import torch

from core import config
from core.cache import CacheStats, teacher_logits
from core.errors import ConfigError
from core.models import ModelSpec, build_model
from core.pipeline import prepare, run_experiment
from core.report import COLUMNS
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
    assert results["status"] == "done"
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    schemes = {e["scheme"] for e in results["ensembles"]}
    assert {"mean_prob", "mean_logit", "vote", "learned", "uncertainty", "stacking"} <= schemes
    kinds = [(s["kind"], s["seed"]) for s in results["students"]]
    assert kinds == [("scratch", 0), ("kd", 0), ("scratch", 1), ("kd", 1)]
    methods = [r["method"] for r in results["comparison"]]
    assert methods[:2] == ["test_resnet", "test_efficientnet"]
    assert "ensemble/mean_logit" in methods and methods[-2:] == ["student/scratch", "student/kd"]
    for row in results["comparison"]:
        assert set(COLUMNS) <= set(row)
        assert row["params"] > 0 and row["latency_ms"] > 0 and row["throughput"] > 0
    rows = {r["method"]: r for r in results["comparison"]}
    # An ensemble costs the sum of its members.
    assert rows["ensemble/mean_logit"]["params"] == rows["test_resnet"]["params"] + rows["test_efficientnet"]["params"]
    assert rows["student/kd"]["seeds"] == 2
    summary = results["summary"]
    assert summary["target_scheme"] == "mean_logit"
    assert {"per_seed", "of_means"} <= set(summary["gain_recovery"])


def test_rerun_reuses_teachers_and_logit_cache(tiny_run):
    out, cfg, first = tiny_run
    again = run_experiment(prepare(cfg, out), out)
    assert again["logit_cache"] == {"hits": 2, "misses": 0}
    assert [t["test_acc"] for t in again["teachers"]] == [t["test_acc"] for t in first["teachers"]]
    assert [t["weights_hash"] for t in again["teachers"]] == [t["weights_hash"] for t in first["teachers"]]


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
    assert [(s["kind"], s["round"]) for s in results["students"]] == [("scratch", None), ("kd", 1), ("kd", 2)]
    methods = [r["method"] for r in results["comparison"]]
    assert methods[-2:] == ["student/kd-round1", "student/kd-round2"]
