"""When distillation pays: data.train_fraction, the saved-figures chart, the Learn page drawing it, and
benchmarks/when_kd_pays.py end to end on tiny shapes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from core import config
from core.config import DataConfig
from core.data import load_data
from core.errors import DataError
from dashboard import figures
from dashboard.figures import kd_pays

ROOT = Path(__file__).resolve().parent.parent
LEARN_PAGE = str(ROOT / "dashboard" / "views" / "learn.py")
SHAPES = dict(name="shapes", count=400, image_size=16, num_classes=4, noise=0.05)


def _rows(split) -> set[int]:
    return set(split.source_index.tolist())


# ---------- data.train_fraction ----------

def test_a_train_share_keeps_val_and_test_and_nests():
    full = load_data(DataConfig(**SHAPES), "cpu")
    half = load_data(DataConfig(**SHAPES, train_fraction=0.5), "cpu")
    quarter = load_data(DataConfig(**SHAPES, train_fraction=0.25), "cpu")
    assert len(half.train) == round(0.5 * len(full.train)) and len(quarter.train) == round(0.25 * len(full.train))
    for cut in (half, quarter):  # the same val and test images at every share
        assert _rows(cut.val) == _rows(full.val) and _rows(cut.test) == _rows(full.test)
    assert _rows(quarter.train) <= _rows(half.train) <= _rows(full.train)  # nested: a learning curve
    counts = torch.bincount(half.train.y, minlength=4)
    assert counts.min() >= 0.9 * counts.max()  # stratified: the classes keep their (equal) shares


def test_a_train_share_that_loses_a_class_names_the_field_and_the_default_keeps_old_folders():
    with pytest.raises(DataError) as err:
        load_data(DataConfig(**SHAPES, train_fraction=0.01), "cpu")  # 3 images for 4 classes
    assert err.value.field == "data.train_fraction"
    with pytest.raises(ValueError):
        DataConfig(train_fraction=0.0)
    # A folder written before the field existed holds the same run as the default share of 1.
    assert "train_fraction" not in config.load(preset_name="digits-demo").identity()["data"]
    assert config.load(preset_name="digits-demo",
                       overrides=["data.train_fraction=0.5"]).identity()["data"]["train_fraction"] == 0.5


# ---------- the chart ----------

def _stat(mean, std=0.0):
    return {"mean": mean, "std": std, "n": 2 if mean is not None else 0}


def _cell(share, width, recovery, std, gap=0.02, gain=0.01, test_images=300):
    return {"share": share, "width": width, "train_images": int(1000 * share), "test_images": test_images,
            "teacher_epochs": 10, "student_epochs": 10, "gap": _stat(gap, 0.004), "gain": _stat(gain, 0.002),
            "recovery": _stat(recovery, std), "reaches_target": recovery is not None and recovery >= 0.5,
            "gap_resolved": gap * test_images >= 2, "resolved": gap * test_images >= 2,
            "per_teacher_seed": [{"teacher_seed": 0, "recovery": recovery}, {"teacher_seed": 1, "recovery": None}]}


REPORT = {"command": "python benchmarks/when_kd_pays.py --shares 0.5 1.0", "date": "2025-01-31", "data": "digits",
          "widths": [0.125, 0.25], "width_params": {"0.125": 80188, "0.25": 310060}, "teacher_seeds": [0, 1],
          "student_seeds": 3, "target": 0.5,
          "cells": [_cell(1.0, 0.125, 0.4, 0.1), _cell(0.5, 0.125, 0.6, 0.05), _cell(0.5, 0.25, None, None),
                    _cell(1.0, 0.25, 0.3, 0.2, gap=0.005)]}


def test_the_chart_puts_each_width_on_its_own_line_sorted_by_share():
    fig = figures.kd_pays_curve(REPORT)
    assert [t.name for t in fig.data] == ["width 0.125 (80k params)", "width 0.25 (310k params)"]
    narrow, wide = fig.data
    assert list(narrow.x) == [0.5, 1.0] and list(narrow.y) == [0.6, 0.4]
    assert list(narrow.error_y.array) == [0.05, 0.1]
    assert list(wide.x) == [0.5, 1.0] and list(wide.y)[1] == 0.3 and list(wide.y)[0] != list(wide.y)[0]  # None: NaN
    assert fig.layout.shapes[0].y0 == 0.5 and fig.layout.shapes[0].line.dash == "dash"  # the goal
    # The hover says how large the ensemble's lead is in test images: 0.02 x 300 = 6.
    assert "ensemble gap 6.0 ± 1.2 images" in narrow.hovertext[0]
    assert "KD − scratch +3.0 ± 0.6 images" in narrow.hovertext[0]
    assert narrow.hovertext[0].endswith("per teacher seed: 0.60, –")
    # 0.005 x 300 = 1.5 images: under 2, an open marker, and the hover says why.
    assert list(wide.marker.symbol) == ["circle", "circle-open"] and "no answer" in wide.hovertext[1]
    assert "open markers" in fig.layout.title.text
    assert REPORT["command"] in figures.kd_pays_caption(REPORT) and REPORT["date"] in figures.kd_pays_caption(REPORT)


def test_the_chart_refuses_bad_input_and_shows_an_empty_state():
    assert figures.is_empty(figures.kd_pays_curve({**REPORT, "cells": []}))
    with pytest.raises(ValueError, match="cells"):
        figures.kd_pays_curve({"rows": []})
    with pytest.raises(ValueError, match="recovery"):
        figures.kd_pays_curve({"cells": [{"share": 1, "width": 0.1}]})


def test_reading_the_saved_figures(tmp_path):
    assert figures.read_kd_pays(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert figures.read_kd_pays(tmp_path / "bad.json") is None
    (tmp_path / "good.json").write_text(json.dumps(REPORT))
    assert figures.read_kd_pays(tmp_path / "good.json") == REPORT


# ---------- the Learn page ----------

def test_the_shipped_figures_are_drawn():
    saved = figures.read_kd_pays()  # assets/when_kd_pays.json, written by benchmarks/when_kd_pays.py
    assert saved is not None and saved["command"].startswith("python benchmarks/when_kd_pays.py")
    fig = figures.kd_pays_curve(saved)
    assert len(fig.data) == len(saved["widths"]) and not figures.is_empty(fig)


def _learn_choose_tab(monkeypatch, saved: Path):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setattr(kd_pays, "SAVED", saved)  # the page reads the module's path when it runs
    at = AppTest.from_file(LEARN_PAGE, default_timeout=60)
    at.session_state["learn_tab"] = "Ensemble or student?"
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_learn_page_draws_the_saved_figures(monkeypatch, tmp_path):
    (tmp_path / "when_kd_pays.json").write_text(json.dumps(REPORT))
    at = _learn_choose_tab(monkeypatch, tmp_path / "when_kd_pays.json")
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2  # the measurement and the deployment cost
    assert charts[0]["data"][0]["y"] == [0.6, 0.4]
    assert any(REPORT["command"] in c.value for c in at.caption)


def test_the_learn_page_says_what_to_run_when_nothing_is_saved(monkeypatch, tmp_path):
    at = _learn_choose_tab(monkeypatch, tmp_path / "missing.json")
    assert len(at.get("plotly_chart")) == 1  # the deployment cost only
    assert any("benchmarks/when_kd_pays.py" in i.value for i in at.info)


# ---------- the script ----------

def _script():
    spec = importlib.util.spec_from_file_location("when_kd_pays", ROOT / "benchmarks" / "when_kd_pays.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seed(seed, ensemble, scratch, kd):
    gap = ensemble - scratch
    return {"teacher_seed": seed, "ensemble": ensemble, "best_teacher": ensemble, "scratch": scratch, "kd": kd,
            "gap": gap, "gain": kd - scratch, "recovery": (kd - scratch) / gap if gap > 0 else None}


def test_a_cell_answers_only_where_the_ensemble_leads_at_every_teacher_seed():
    script = _script()
    # 100 test images: the ensemble leads by 10 images at both seeds; recoveries 0.6 and 0.5.
    cell = script.summarise([_seed(0, 0.99, 0.89, 0.95), _seed(100, 0.98, 0.88, 0.93)], test_images=100)
    assert cell["recovery"]["mean"] == pytest.approx(0.55) and cell["recovery"]["n"] == 2
    assert cell["resolved"] and cell["reaches_target"] and cell["seeds_reaching_target"] == 2
    assert cell["recovery_of_means"] == pytest.approx((0.94 - 0.885) / (0.985 - 0.885))
    # The ensemble behind the scratch student at one seed: the other seed's 0.8 is no answer.
    cell = script.summarise([_seed(0, 0.97, 0.98, 0.985), _seed(100, 0.99, 0.94, 0.98)], test_images=100)
    assert cell["recovery"]["n"] == 1 and not cell["resolved"] and not cell["reaches_target"]
    # A lead of 1.5 images on average: a ratio of noise, whatever it is.
    cell = script.summarise([_seed(0, 0.99, 0.975, 0.99), _seed(100, 0.99, 0.975, 0.99)], test_images=100)
    assert cell["recovery"]["mean"] == pytest.approx(1.0) and not cell["gap_resolved"] and not cell["reaches_target"]


def test_the_script_measures_every_cell_on_tiny_shapes(tmp_path):
    script = _script()
    base = config.load(overrides=["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=1",
                                  "train.batch_size=32", "teachers=[{model: test_resnet}, {model: test_efficientnet}]",
                                  "distill.teaching=cached"])
    cfg = script.cell_config(base, 0.5, 3)
    assert (cfg.data.train_fraction, cfg.seed, cfg.train.epochs) == (0.5, 3, 2)  # steps held: 1 / 0.5 epochs
    assert script.cell_config(base, 0.5, 3, hold="epochs").train.epochs == 1
    # digits: 1222 train images, 64 a batch: 19 steps an epoch; at 0.2, 244 images, 3 steps: 10 x 19 / 3 epochs.
    assert script.cell_config(config.load(preset_name="digits-demo"), 0.2, 0, full_train=1222).train.epochs == 63
    assert script.overlapping_seeds([0, 1], 3) == [(0, 1)] and script.overlapping_seeds([0, 100], 8) == []
    with pytest.raises(ValueError, match="share scratch students"):
        script.run_benchmark(base, [1.0], [0.125], [0, 1], 2, tmp_path)
    report = script.run_benchmark(base, [0.5, 1.0], [0.0625, 0.125], [0], 1, tmp_path)
    assert [(c["share"], c["width"]) for c in report["cells"]] == [(0.5, 0.0625), (0.5, 0.125), (1.0, 0.0625),
                                                                   (1.0, 0.125)]
    assert report["width_params"]["0.0625"] < report["width_params"]["0.125"]
    half, full = report["cells"][0], report["cells"][2]
    assert half["train_images"] < full["train_images"] and half["test_images"] == full["test_images"]
    for c in report["cells"]:
        seed = c["per_teacher_seed"][0]
        # The project's definitions: gap = ensemble - scratch, recovery = gain / gap (None when gap <= 0).
        assert seed["gap"] == pytest.approx(seed["ensemble"] - seed["scratch"], abs=1e-5)
        assert (seed["recovery"] is None) == (seed["gap"] <= 1e-9)
        if seed["recovery"] is not None:  # saved to 6 digits, hence the tolerance
            assert seed["recovery"] == pytest.approx((seed["kd"] - seed["scratch"]) / seed["gap"], rel=1e-3)
    text = script.format_report({"command": "x", "date": "d", **report})
    assert "gain recovery >= 0.5 (mean over teacher seeds) at:" in text and "below 0.5 at:" in text
    assert figures.kd_pays_curve(json.loads(json.dumps(report))).data  # what the script saves, the page draws
