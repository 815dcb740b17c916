"""Dashboard: the first page renders from the engine (AppTest), figures are pure and correct."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import figures

APP = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")


@pytest.fixture(scope="module")
def setup_page():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    return at


def test_setup_page_loads_the_default_preset(setup_page):
    at = setup_page
    assert not at.exception, at.exception
    assert at.title[0].value == "kdlab"
    assert at.selectbox(key="preset").value == "digits-demo"
    sizes = {m.label: m.value for m in at.metric}
    assert sizes["classes"] == "10"
    assert int(sizes["train"]) + int(sizes["val"]) + int(sizes["test"]) == 1797


def test_setup_page_shows_samples_and_teacher_costs(setup_page):
    at = setup_page
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2
    grid = charts[0]
    assert len(grid["data"]) >= 10  # at least one image per class
    teachers = next(d.value for d in at.dataframe if "flops" in d.value.columns)
    assert list(teachers["model"]) == ["resnet10t", "test_efficientnet", "test_byobnet"]
    assert (teachers["params"] > 0).all() and (teachers["flops"] > 0).all()
    assert len(charts[1]["data"][0]["x"]) == 4  # three teachers and the student
    assert any("kdlab run --preset digits-demo" in c.value for c in at.code)


def test_switching_preset_reports_missing_data_without_traceback():
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.selectbox(key="preset").set_value("cifar10-gpu").run()
    assert not at.exception
    said = [m.value for m in (*at.warning, *at.error)]  # an error since Launch is disabled for it
    assert any("data.root" in m for m in said), said


def test_sample_grid_figure():
    images = np.random.default_rng(0).integers(0, 255, (10, 1, 8, 8), dtype=np.uint8)
    fig = figures.sample_grid(images, [str(i) for i in range(10)], columns=4)
    assert len(fig.data) == 10
    assert [a.text for a in fig.layout.annotations][:3] == ["0", "1", "2"]
    rgb = figures.sample_grid(np.zeros((2, 3, 8, 8), dtype=np.uint8), ["a", "b"])
    assert rgb.data[0].type == "image"
    with pytest.raises(ValueError):
        figures.sample_grid(np.zeros((0, 1, 8, 8), dtype=np.uint8), [])


def test_model_cost_bars_in_millions():
    fig = figures.model_cost_bars(["a", "b"], [2_000_000, 500_000], [30_000_000, 1_000_000])
    assert list(fig.data[0].y) == [2.0, 0.5]
    assert list(fig.data[1].y) == [30.0, 1.0]
