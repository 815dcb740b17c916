"""A search's space: `--space` texts parse into dimensions whose kinds come from the config's field
types, Optuna samples inside them, they round-trip through text and JSON, and every bad input is a
ConfigError naming the field and the fix (fast: nothing trains)."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest

from core import config
from core.config_fields import FieldSpec, field_spec, spec_for_path
from core.errors import ConfigError
from core.search.space import (Dimension, check_space, grid_search_space, parse_dimension, read_space,
                               space_from_axes, space_json)
from core.sweep_grid import parse_axis

# The tiny shapes config of tests/test_sweep.py, on a bundled preset.
TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]",
        "student.model=test_byobnet", "student.width=null", "student.seeds=2"]


@pytest.fixture(scope="module")
def base() -> config.RunConfig:
    return config.load(preset_name="class-quick", overrides=TINY)


# --- the field reader (core/config_fields.py) ---------------------------------------------------

def test_spec_for_path_reads_the_section_models_of_run_config():
    alpha = spec_for_path("distill.alpha")
    assert isinstance(alpha, FieldSpec) and (alpha.kind, alpha.ge, alpha.le) == (float, 0.0, 1.0)
    assert spec_for_path("student.epochs").kind is int
    assert spec_for_path("distill.teaching").choices == ("cached", "views", "live")
    assert spec_for_path("seed").kind is int                       # a top-level field
    assert spec_for_path("teachers.0.seeds").le == 20               # a list section, indexed
    assert spec_for_path("distill.loss", registry=False).choices is None  # the type only, no registry import
    assert "hinton" in spec_for_path("distill.loss").choices


@pytest.mark.parametrize("path, problem, fix", [
    ("distill.temprature", "distill has no field 'temprature'", "did you mean distill.temperature?"),
    ("distill.nope", "distill has no field 'nope'", "valid fields: temperature, alpha, loss, rounds"),
    ("training.lr", "'training' is not a config section", "use one of: data, teachers, ensemble"),
    ("distill", "is a section, not a field", "distill.temperature"),
    ("seed.x", "'seed' is a value, not a section", "write just seed"),
    ("teachers.model", "'teachers' is a list", "teachers.0.model"),
    ("distill.alpha.x", "has no nested sections", "temperature, alpha"),
])
def test_spec_for_path_refuses_unknown_paths_naming_the_valid_fields(path, problem, fix):
    with pytest.raises(ConfigError) as err:
        spec_for_path(path)
    assert err.value.field == path
    assert problem in err.value.problem and fix in err.value.fix


def test_dashboard_fields_reexports_the_core_reader():
    from dashboard import fields

    assert fields.field_spec is field_spec and fields.FieldSpec is FieldSpec


def test_the_space_imports_neither_torch_nor_optuna():
    code = ("import sys, core.search, core.search.space, core.config_fields; "
            "print(sorted(m for m in ('torch', 'optuna', 'streamlit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- parsing -------------------------------------------------------------------------------------

def test_ranges_take_their_kind_from_the_field_type():
    t = parse_dimension("distill.temperature=1..8:log")
    assert t == Dimension("distill.temperature", "float", 1.0, 8.0, log=True)
    assert isinstance(t.low, float)
    e = parse_dimension("student.epochs = 2..12")
    assert (e.kind, e.low, e.high, e.log) == ("int", 2, 12, False) and isinstance(e.low, int)
    assert parse_dimension("student.lr=1e-4..1e-1:log").low == pytest.approx(1e-4)  # YAML would read a str
    assert parse_dimension("student.width=0.25..1").kind == "float"  # optional float
    assert parse_dimension("distill.view_stride=1..4").kind == "int"


def test_choices_are_yaml_scalars_and_each_is_kept_once():
    d = parse_dimension("distill.loss=hinton, dkd")
    assert d == Dimension("distill.loss", "categorical", choices=("hinton", "dkd"))
    assert parse_dimension("student.width=null,0.5,1").choices == (None, 0.5, 1)
    assert parse_dimension("distill.alpha=0.5").choices == (0.5,)                  # a single value
    assert parse_dimension("distill.temperature=2,2.0,4").choices == (2, 4)        # 2 and 2.0: one config
    assert parse_dimension("ensemble.scheme=mean_logit,vote").kind == "categorical"


def test_distributions_are_accepted_and_sampled_inside_by_optuna():
    dims = [parse_dimension(t) for t in ("distill.temperature=1..8:log", "student.epochs=2..12",
                                         "distill.alpha=0.1..0.9", "distill.loss=hinton,dkd")]
    kinds = [type(d.distribution()) for d in dims]
    assert kinds == [optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution,
                     optuna.distributions.FloatDistribution, optuna.distributions.CategoricalDistribution]
    assert dims[0].distribution().log and not dims[2].distribution().log
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask({d.field: d.distribution() for d in dims})
        p = trial.params
        assert 1.0 <= p["distill.temperature"] <= 8.0 and 0.1 <= p["distill.alpha"] <= 0.9
        assert isinstance(p["student.epochs"], int) and 2 <= p["student.epochs"] <= 12
        assert p["distill.loss"] in ("hinton", "dkd")
        study.tell(trial, 0.5)


@pytest.mark.parametrize("text", [
    "distill.temperature=1..8:log", "distill.temperature=0.5..8", "student.lr=0.0001..0.1:log",
    "student.lr=1e-05..0.01:log", "student.epochs=2..12", "distill.loss=hinton,dkd", "student.width=null,0.5,1",
    "distill.alpha=0.5", "student.model=test_byobnet,test_resnet",
])
def test_text_round_trips(text):
    d = parse_dimension(text)
    assert d.text() == text
    assert parse_dimension(d.text()) == d


def test_a_string_that_reads_as_another_type_is_quoted_in_text():
    d = Dimension("student.model", "categorical", choices=("1", "true", "resnet10t"))
    assert parse_dimension(d.text()) == d


def test_json_round_trips():
    dims = [parse_dimension(t) for t in ("distill.temperature=1..8:log", "student.epochs=2..12",
                                         "student.width=null,0.5", "distill.loss=hinton")]
    stored = json.loads(json.dumps(space_json(dims)))
    assert read_space(stored) == dims
    assert stored[0] == {"field": "distill.temperature", "kind": "float", "low": 1.0, "high": 8.0, "log": True}
    assert stored[2] == {"field": "student.width", "kind": "categorical", "choices": [None, 0.5]}


@pytest.mark.parametrize("data, field", [
    ({"kind": "float", "low": 1, "high": 2}, "--space"),                            # no field
    ({"field": "distill.alpha", "kind": "normal", "low": 0, "high": 1}, "distill.alpha"),
    ({"field": "distill.alpha", "kind": "float", "low": 0}, "distill.alpha"),       # no HIGH
    ({"field": "distill.loss", "kind": "categorical", "choices": []}, "distill.loss"),
    ({"field": "distill.alpha", "kind": "float", "low": 0, "high": 1, "step": 0.1}, "distill.alpha"),
])
def test_a_malformed_stored_dimension_is_a_config_error(data, field):
    with pytest.raises(ConfigError) as err:
        Dimension.from_json(data)
    assert err.value.field == field and err.value.fix


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, field, problem, fix", [
    ("distill.temperature", "--space", "is not FIELD=LOW..HIGH or FIELD=a,b,c", "--space distill.temperature="),
    ("=1..2", "--space", "names no field", "write e.g."),
    ("distill.temperature=", "distill.temperature", "gives no values", "distill.temperature=LOW..HIGH"),
    ("distill.temprature=1..8", "distill.temprature", "no field 'temprature'", "did you mean distill.temperature"),
    ("train.lr=0.001..0.1", "train.lr", "varies the students only", "--set"),
    ("teachers.0.model=resnet18,resnet34", "teachers.0.model", "varies the students only", "--set"),
    ("distill.rounds=1..3", "distill.rounds", "cannot be a sweep axis", "kdlab run"),
    ("student.seeds=1,2", "student.seeds", "cannot be a sweep axis", "--seeds"),
    ("distill.alpha=0.9..0.1", "distill.alpha", "LOW 0.9 is above HIGH 0.1", "distill.alpha=0.1..0.9"),
    ("distill.alpha=0.5..0.5", "distill.alpha", "holds one value", "list it as one value instead"),
    ("distill.temperature=low..8", "distill.temperature", "'low'", "write numbers"),
    ("distill.temperature=1..inf", "distill.temperature", "not a finite number", "write finite numbers"),
    ("student.epochs=2.5..10", "student.epochs", "is not an integer", "write integers"),
    ("distill.temperature=0..8:log", "distill.temperature", "log scale needs LOW > 0", "distill.temperature=0.08..8"),
    ("student.epochs=0..8:log", "student.epochs", "log scale needs LOW > 0", "student.epochs=1..8:log"),
    ("distill.temperature=1..8:logarithmic", "distill.temperature", "unknown suffix ':logarithmic'", ":log"),
    ("distill.loss=a..b", "distill.loss", "is a str field", "list the values instead, e.g. --space distill.loss=hinton"),
    ("distill.teaching=cached..live", "distill.teaching", "a range", "distill.teaching=cached,views,live"),
])
def test_parse_refuses_bad_text_naming_the_field_and_the_fix(text, field, problem, fix):
    with pytest.raises(ConfigError) as err:
        parse_dimension(text)
    assert err.value.field == field
    assert problem in err.value.problem, err.value
    assert fix in err.value.fix, err.value
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, problem, fix", [
    # the pydantic field's limits, named
    ("distill.alpha=0.5..1.5", "outside the field's limits [0, 1]: HIGH 1.5 is not <= 1", "within [0, 1]"),
    ("distill.temperature=0..8", "limits (0, 100]: LOW 0 is not > 0", "within (0, 100]"),
    ("student.epochs=0..20", "LOW 0 is not >= 1", "within [1, 10000]"),
    ("distill.view_stride=2..32", "HIGH 32 is not <= 16", "within [1, 16]"),
    # choices the field does not take
    ("distill.loss=hinton,hintn", "the choice hintn in --space distill.loss=hinton,hintn is not a valid", "dkd"),
    ("distill.teaching=views,cachd", "is not a valid distill.teaching", "use any of: cached, views, live"),
    ("ensemble.scheme=mean_logit,avg", "is not a valid ensemble.scheme", "mean_prob"),
    # refused by the config itself (point_config), rephrased to name the --space
    ("student.width=0.5,8", "the choice 8 in --space student.width=0.5,8 is refused", "change the --space"),
    ("student.epochs=2,2.5", "the choice 2.5 in --space student.epochs=2,2.5 is refused", "student.epochs"),
    ("distill.temperature=4,hot", "the choice hot", "change the --space distill.temperature values"),
])
def test_check_space_refuses_values_the_field_does_not_accept(base, text, problem, fix):
    dim = parse_dimension(text)
    with pytest.raises(ConfigError) as err:
        check_space(base, [dim])
    assert err.value.field == dim.field
    assert problem in err.value.problem, err.value
    assert fix in err.value.fix, err.value
    assert "grid point" not in str(err.value) and "--grid" not in str(err.value)


def test_check_space_accepts_a_good_space(base):
    dims = [parse_dimension(t) for t in ("distill.temperature=1..8:log", "distill.alpha=0..1", "student.epochs=1..20",
                                         "distill.loss=hinton,dkd", "student.width=null,0.5",
                                         "ensemble.scheme=mean_logit,vote")]
    check_space(base, dims)  # no error


def test_check_space_needs_a_dimension_and_each_field_once(base):
    with pytest.raises(ConfigError, match="a search needs at least one --space") as err:
        check_space(base, [])
    assert err.value.field == "--space" and "distill.temperature" in err.value.fix
    twice = [parse_dimension("distill.alpha=0.1..0.5"), parse_dimension("distill.alpha=0.9")]
    with pytest.raises(ConfigError, match="given twice") as err:
        check_space(base, twice)
    assert err.value.field == "distill.alpha" and "once" in err.value.fix


def test_check_space_rechecks_dimensions_built_in_code(base):
    for dim, field, words in [
        (Dimension("train.lr", "float", 0.001, 0.1), "train.lr", "varies the students only"),
        (Dimension("student.epochs", "float", 1.0, 5.0), "student.epochs", "is a int field, not float"),
        (Dimension("distill.loss", "float", 1.0, 5.0), "distill.loss", "a range needs a number field"),
        (Dimension("distill.alpha", "float", 0.5, 0.2), "distill.alpha", "empty or reversed"),
        (Dimension("distill.alpha", "float", 0.0, 0.5, log=True), "distill.alpha", "log scale needs LOW > 0"),
    ]:
        with pytest.raises(ConfigError, match=words) as err:
            check_space(base, [dim])
        assert err.value.field == field and err.value.fix


# --- grids ----------------------------------------------------------------------------------------

def test_a_grid_is_categorical_dimensions():
    axes = [parse_axis("distill.temperature=1,2,4"), parse_axis("distill.loss=hinton,dkd")]
    dims = space_from_axes(axes)
    assert dims == [Dimension("distill.temperature", "categorical", choices=(1, 2, 4)),
                    Dimension("distill.loss", "categorical", choices=("hinton", "dkd"))]
    grid = grid_search_space(dims)
    assert grid == {"distill.temperature": [1, 2, 4], "distill.loss": ["hinton", "dkd"]}
    # optimize, not ask/tell: GridSampler calls study.stop() after the last point, which Optuna
    # refuses (RuntimeError from tell) outside optimize.
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(grid, seed=0))
    study.optimize(lambda t: [t.suggest_categorical(d.field, list(d.choices)) for d in dims] and 0.0, n_trials=10)
    seen = {(t.params["distill.temperature"], t.params["distill.loss"]) for t in study.trials}
    assert len(study.trials) == 6 and len(seen) == 6  # every point of the grid, once; then it stops


def test_a_grid_refuses_a_range_naming_the_field():
    dims = [parse_dimension("distill.loss=hinton,dkd"), parse_dimension("distill.temperature=1..8")]
    with pytest.raises(ConfigError, match="a grid needs listed values") as err:
        grid_search_space(dims)
    assert err.value.field == "distill.temperature"
    assert "--space distill.temperature=1,8" in err.value.fix and "--search tpe" in err.value.fix


def test_space_from_axes_refuses_a_field_a_search_may_not_vary():
    from core.sweep_grid import Axis

    with pytest.raises(ConfigError) as err:
        space_from_axes([Axis("train.lr", (0.1, 0.2))])
    assert err.value.field == "train.lr"
