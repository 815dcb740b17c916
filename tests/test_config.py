"""Config: presets validate, overrides apply, bad values give one-line errors naming the field."""

from __future__ import annotations

import pytest

from core import config
from core.errors import ConfigError


def test_every_preset_validates_and_default_is_first():
    names = config.list_presets()
    assert names[0] == "digits-demo"
    assert {"cifar10-gpu", "class-quick", "class-bias-variance", "class-bagging"} <= set(names)
    for name in names:
        cfg = config.load(preset_name=name)
        assert cfg.teachers, name


def test_digits_demo_has_three_different_teachers():
    cfg = config.load()
    assert cfg.data.name == "digits"
    assert len({t.model for t in cfg.teachers}) == 3


def test_overrides_cast_values_and_index_lists():
    cfg = config.load(overrides=["train.epochs=3", "distill.temperature=2.5", "teachers.0.model=resnet18",
                                 "data.augment=false"])
    assert cfg.train.epochs == 3
    assert cfg.distill.temperature == 2.5
    assert cfg.teachers[0].model == "resnet18"
    assert cfg.data.augment is False


@pytest.mark.parametrize("override, field", [
    ("distill.temperature=0", "distill.temperature"),
    ("distill.temperature=-1", "distill.temperature"),
    ("distill.alpha=1.5", "distill.alpha"),
    ("distill.alpha=-0.1", "distill.alpha"),
    ("train.epochs=0", "train.epochs"),
    ("train.optimizer=adam", "train.optimizer"),
    ("data.bogus=1", "data.bogus"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        config.load(overrides=[override])
    message = str(info.value)
    assert message.startswith(field), message
    assert "\n" not in message


def test_bad_override_syntax_and_index():
    with pytest.raises(ConfigError, match="key=value"):
        config.load(overrides=["train.epochs"])
    with pytest.raises(ConfigError, match="index"):
        config.load(overrides=["teachers.7.model=resnet18"])


def test_empty_teacher_list_is_refused():
    with pytest.raises(ConfigError, match="teachers"):
        config.load(overrides=["teachers=[]"])


def test_round_trip_through_yaml_and_toml(tmp_path):
    cfg = config.load(overrides=["train.epochs=2"])
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert config.load(path) == cfg
    toml = tmp_path / "c.toml"
    toml.write_text('name = "t"\n[data]\nname = "shapes"\n[[teachers]]\nmodel = "resnet10t"\n')
    loaded = config.load(toml)
    assert loaded.data.name == "shapes" and loaded.teachers[0].model == "resnet10t"


def test_unreadable_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        config.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        config.load(preset_name="nope")


def test_student_train_config_overrides_only_what_is_set() -> None:
    cfg = config.load(overrides=["train.epochs=7", "train.lr=0.003", "student.lr=null", "student.epochs=null"])
    assert cfg.student.train_config(cfg.train) == cfg.train  # nothing set: the teachers' schedule
    cfg = config.load(overrides=["train.epochs=7", "train.lr=0.003", "student.lr=0.02", "student.epochs=12"])
    student = cfg.student.train_config(cfg.train)
    assert (student.lr, student.epochs, student.batch_size) == (0.02, 12, cfg.train.batch_size)
    assert (cfg.train.lr, cfg.train.epochs) == (0.003, 7)  # the teachers' config is untouched
    with pytest.raises(ConfigError, match="student.lr"):
        config.load(overrides=["student.lr=0"])
