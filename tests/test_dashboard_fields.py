"""The Setup form's widgets come from the config's pydantic fields, and the form is validated once a rerun."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import DataConfig, DistillConfig, RunConfig, StudentConfig, TeacherConfig, TrainConfig
from dashboard import fields

SETUP = str(Path(__file__).resolve().parent.parent / "dashboard" / "views" / "setup.py")


def test_field_spec_reads_bounds_defaults_choices_and_help():
    alpha = fields.field_spec(DistillConfig, "alpha")
    assert (alpha.kind, alpha.default, alpha.ge, alpha.le) == (float, 0.9, 0.0, 1.0)
    assert alpha.help == DistillConfig.model_fields["alpha"].description
    width = fields.field_spec(StudentConfig, "width")
    assert width.optional and width.gt == 0.0 and width.minimum(0.001) == pytest.approx(0.001)
    assert fields.field_spec(TrainConfig, "optimizer").choices == ("adamw", "sgd")  # a Literal field
    from core.data import list_datasets
    assert fields.field_spec(DataConfig, "name").choices == tuple(list_datasets())  # a registry's names
    assert fields.field_spec(TeacherConfig, "model").default is None  # required: no default to show
    assert "data" not in fields.form_fields(RunConfig) and "teachers" not in fields.form_fields(RunConfig)
    with pytest.raises(ValueError, match="has no field 'nope'"):
        fields.field_spec(TrainConfig, "nope")


def _new_field_app() -> None:
    """A section with a field no page knows about, drawn by more_settings (run by AppTest)."""
    from typing import Literal

    import streamlit as st
    from pydantic import BaseModel, Field

    from dashboard import fields

    class Extra(BaseModel):
        warmup: float = Field(0.3, ge=0.1, le=0.8, description="A share of the steps.")
        mode: Literal["fast", "slow"] = Field("slow", description="How.")
        steps: int | None = Field(None, gt=0, description="Steps, or empty for all.")

    section = st.session_state.setdefault("section", {})
    fields.more_settings(Extra, section, shown=(), path="extra")
    st.session_state["seen"] = dict(section)


def test_a_new_config_field_appears_with_its_range_default_and_help():
    at = AppTest.from_function(_new_field_app)
    at.run()
    assert not at.exception, at.exception
    warmup = at.number_input(key="cfg.extra.warmup")
    assert (warmup.label, warmup.value, warmup.min, warmup.max) == ("extra.warmup", 0.3, 0.1, 0.8)
    assert warmup.help == "A share of the steps."
    assert at.selectbox(key="cfg.extra.mode").options == ["fast", "slow"]
    steps = at.number_input(key="cfg.extra.steps")
    assert steps.value is None and steps.min == 1  # gt=0 on an int: 1 is the smallest it offers
    assert at.session_state["seen"] == {"warmup": 0.3, "mode": "slow", "steps": None}


def test_setup_widgets_carry_the_config_limits():
    at = AppTest.from_file(SETUP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    size = at.number_input(key="image_size")
    assert (size.min, size.max) == (8, 512) and size.help == DataConfig.model_fields["image_size"].description
    epochs = at.number_input(key="epochs")
    assert (epochs.min, epochs.max) == (1, 10_000)
    temperature = at.number_input(key="temperature")
    assert temperature.min > 0 and temperature.max == 100.0  # gt=0, le=100
    alpha = at.slider(key="alpha")
    assert (alpha.min, alpha.max) == (0.0, 1.0)
    assert at.selectbox(key="teaching").options == ["cached", "views", "live"]
    batch = at.number_input(key="cfg.train.batch_size")  # not laid out by hand: under "More training settings"
    assert (batch.min, batch.max) == (1, 65_536)
    # Student epochs may be empty (None = train.epochs); an edit reaches the config the page launches.
    assert at.number_input(key="student_epochs").value is None
    at.number_input(key="student_epochs").set_value(7).run()
    assert at.session_state["raw"]["student"]["epochs"] == 7
    at.number_input(key="cfg.train.batch_size").set_value(96).run()
    assert at.session_state["raw"]["train"]["batch_size"] == 96


def test_setup_validates_the_form_once_per_rerun(monkeypatch):
    calls = []
    original = RunConfig.model_validate.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(RunConfig, "model_validate", classmethod(counting))
    at = AppTest.from_file(SETUP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert len(calls) == 1
    calls.clear()
    at.slider(key="alpha").set_value(0.5).run()
    assert not at.exception and len(calls) == 1
    calls.clear()
    at.text_input(key="student_model").set_value("no_such_net_xyz").run()  # an invalid form, still once
    assert len(calls) == 1 and any("student.model" in e.value for e in at.error)
