"""Searches on the dashboard through AppTest, with a real store, JobManager, Optuna study and tiny training:
the launcher's errors and command, a tiny search launched from Setup, the Search page's charts, pick
and trials table, and the trial actions (open, load into Setup, train again with more seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.lifecycle import RunStatus

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
PAGES = ROOT / "dashboard" / "views"
# tests/test_search.py's TINY as a config dict (shapes data, cached teaching, one student seed), with one
# teacher: its two trials' val accuracies differ, so every chart of the Search page has data.
TINY = {"name": "tiny-search", "data": {"name": "shapes", "count": 240, "image_size": 16},
        "teachers": [{"model": "test_resnet"}],
        "student": {"model": "test_byobnet", "width": None, "seeds": 1},
        "distill": {"teaching": "cached"}, "train": {"epochs": 2, "batch_size": 32}}


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=120)


def setup_with(**state) -> AppTest:
    """The Setup page on TINY, with the launcher's widgets set through session_state before the first run."""
    at = page("setup")
    at.session_state["loaded_config"] = TINY
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def charts(at: AppTest) -> dict[str, dict]:
    """The page's plotly charts by key."""
    return {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}


RANGE_ROW = {"sweep_axis_0": "distill.temperature", "search_kind_0": "range", "search_algorithm": "tpe"}


def test_the_launcher_shows_each_bad_input_as_its_one_line_error():
    at = setup_with(sweep_axis_0="distill.temperatur", sweep_values_0="1, 2")  # a typed field name
    assert any(e.startswith("distill.temperatur:") and "did you mean distill.temperature" in e for e in errors(at))
    assert "sweep_launch" not in [b.key for b in at.button]  # nothing to launch
    at = setup_with(**RANGE_ROW, search_low_0="8", search_high_0="1")
    assert any(e.startswith("distill.temperature: LOW 8 is above HIGH 1") for e in errors(at)), errors(at)
    at = setup_with(**RANGE_ROW, search_low_0="0", search_high_0="8", search_log_0=True)
    assert any("log scale needs LOW > 0" in e for e in errors(at)), errors(at)
    at = setup_with(**{**RANGE_ROW, "search_algorithm": "grid"}, search_low_0="1", search_high_0="8")
    assert any("a grid needs listed values" in e for e in errors(at)), errors(at)
    assert not at.exception


def test_the_launcher_shows_the_cost_and_the_command():
    at = setup_with(**RANGE_ROW, search_low_0="1", search_high_0="8", search_log_0=True, search_trials=5,
                    search_objective="latency_ms", sweep_seeds=2)
    assert not errors(at), errors(at)
    captions = [c.value for c in at.caption]
    # 5 trials x 2 seeds x 2 students + 1 teacher draw
    assert any(c.startswith("5 trial(s) x 2 seed(s) x 2 student trainings + 1 teacher draw(s): at most 21") for c in
               captions), captions
    assert any("fastest trial" in c for c in captions)  # the pick rule of val_acc,latency_ms
    command = at.code[-1].value
    assert command == ("kdlab sweep config.yaml --search tpe --trials 5 --space distill.temperature=1..8:log "
                       "--objective val_acc,latency_ms --seeds 2 --sampler-seed 0")
    assert at.button(key="sweep_launch").label == "Launch search" and not at.button(key="sweep_launch").disabled
    at.selectbox(key="search_prune").set_value("median").run()  # Optuna prunes one objective only
    assert any(e.startswith("--prune:") for e in errors(at)), errors(at)


def test_the_launcher_offers_ray_with_its_address_and_says_where_trials_run():
    pytest.importorskip("ray", reason="the ray extra is not installed")
    at = setup_with(**RANGE_ROW, search_low_0="1", search_high_0="8", search_trials=4, search_executor="ray",
                    search_workers=2)
    assert not errors(at), errors(at)
    assert any(c.value.startswith("Runs as Ray Tune trials, 2 at once, on a local Ray started for the sweep")
               for c in at.caption), [c.value for c in at.caption]
    assert "--executor ray --workers 2" in at.code[-1].value
    at.text_input(key="search_ray_address").set_value("127.0.0.1:9").run()  # nothing answers there
    assert any(e.startswith("--ray-address: no Ray head answers at 127.0.0.1:9") for e in errors(at)), errors(at)
    assert "sweep_launch" not in [b.key for b in at.button]


@pytest.fixture(scope="module")
def launched_search():
    """A two-trial TPE search over the student's lr (val accuracy and latency) launched from Setup and trained."""
    # student.lr from far too small to large: the two trials' val accuracies differ, so importance has data
    at = setup_with(**{**RANGE_ROW, "sweep_axis_0": "student.lr"}, search_low_0="0.0001", search_high_0="0.3",
                    search_log_0=True, search_trials=2, search_objective="latency_ms", sweep_seeds=1)
    assert not errors(at), errors(at)
    at.button(key="sweep_launch").click().run()
    assert not at.exception, at.exception
    sweep_id = at.session_state["search_sweep"]
    assert any(sweep_id in s.value and "Search page" in s.value for s in at.success)
    from dashboard.state import job_manager
    assert job_manager().wait_sweep(sweep_id, timeout=600) == RunStatus.DONE
    return sweep_id


def test_a_launched_search_is_a_sweep_row_with_its_trials(launched_search):
    from dashboard.state import run_store
    store = run_store()
    sweep = store.get_sweep(launched_search)
    assert sweep.status == RunStatus.DONE and sweep.spec["search"] == "tpe"
    assert sweep.spec["objectives"] == ["val_acc", "latency_ms"] and sweep.spec["trials"] == 2
    trials = store.trials(launched_search)
    assert [t.trial for t in trials] == [0, 1] and {t.status for t in trials} == {RunStatus.DONE}
    assert sweep.best in {t.id for t in trials}


def test_the_search_page_lists_the_sweep_and_draws_its_charts_pick_and_trials(launched_search):
    at = page("search")
    at.session_state["search_sweep"] = launched_search
    at.run()
    assert not at.exception, at.exception
    picker = at.selectbox(key="search_select")
    assert picker.value == launched_search
    assert any(launched_search in o and "done" in o and "2/2 trials" in o for o in picker.options), picker.options
    drawn = charts(at)
    assert set(drawn) == {"search_history", "search_pareto", "search_parallel", "search_importance"}
    empty = {k: c["layout"]["meta"]["message"] for k, c in drawn.items()
             if (c["layout"].get("meta") or {}).get("empty")}
    assert not empty, empty  # two finished trials: every chart has data, importance included
    history = {t.get("name") for t in drawn["search_history"]["data"]}
    assert {"finished", "best so far", "picked"} <= history
    assert {"Pareto front", "picked"} <= {t.get("name") for t in drawn["search_pareto"]["data"]}
    markdown = " ".join(m.value for m in at.markdown)
    assert "Pick rule:" in markdown and "fastest trial (latency_ms)" in markdown
    table = at.dataframe[0].value
    assert list(table["trial"]) == [0, 1] and set(table["state"]) == {"finished"}
    assert table["picked"].sum() == 1 and {"kd_val_acc", "kd_test_acc_mean", "latency_ms", "pareto"} <= set(table)
    from dashboard.state import run_store
    picked = table.loc[table["picked"], "run"].item()
    assert picked == run_store().get_sweep(launched_search).best
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["picked trial"] == f"#{table.loc[table['picked'], 'trial'].item()}"


def app_on_search(sweep_id: str) -> AppTest:
    """The whole app (pages switch) opened on the Search page with `sweep_id` chosen."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["search_sweep"] = sweep_id
    at.run()
    at.switch_page("views/search.py").run()
    assert not at.exception, at.exception
    return at


def test_a_trial_opens_on_runs_and_loads_into_setup(launched_search):
    from dashboard.state import run_store
    store = run_store()
    best = store.get_sweep(launched_search).best
    at = app_on_search(launched_search)
    assert at.selectbox(key=f"search_trial_{launched_search}").value == best  # the picked trial first
    at.button(key="search_open").click().run()
    assert not at.exception, at.exception
    assert at.session_state["selected_run"] == best and at.title[0].value == "Runs"
    at = app_on_search(launched_search)
    at.button(key="search_load").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "kdlab"  # the Setup page, its form on the trial's config
    lr = store.get_run(best).config["student"]["lr"]
    assert lr is not None and at.number_input(key="student_lr").value == pytest.approx(lr)  # the trial's, not TINY's


def test_train_again_with_more_seeds_queues_a_new_run(launched_search):
    from dashboard.state import job_manager, run_store
    store = run_store()
    best = store.get_run(store.get_sweep(launched_search).best)
    at = page("search")
    at.session_state["search_sweep"] = launched_search
    at.run()
    at.number_input(key=f"search_more_seeds_{best.id}").set_value(3).run()
    at.button(key="search_retrain").click().run()
    assert not at.exception, at.exception
    new_id = at.session_state["selected_run"]
    try:
        assert any(new_id in s.value and "3 seeds" in s.value for s in at.success)
        run = store.get_run(new_id)
        assert run.sweep_id is None and run.config["student"]["seeds"] == 3
        assert run.config["student"]["lr"] == best.config["student"]["lr"]  # the trial's settings, more seeds
    finally:
        job_manager().cancel(new_id)  # what it trains is not this test's business
        job_manager().wait(new_id, timeout=120)
    assert at.toggle(key=f"search_export_{best.id}").value is False  # the export panel, offered, drawn when asked
    at.toggle(key=f"search_export_{best.id}").set_value(True).run()
    assert not at.exception, at.exception
    assert any(b.key == f"export_start_{best.id}" for b in at.button)


def test_a_training_search_is_live_and_cancels_then_offers_resume():
    from core import config
    from core.search.space import parse_dimension
    from core.search.spec import make_spec
    from dashboard.state import job_manager
    manager = job_manager()
    cfg = config.validate({**TINY, "train": {"epochs": 30, "batch_size": 32}})  # trains long enough to watch
    sweep_id = manager.submit_search(cfg, make_spec(cfg, search="random", space=[
        parse_dimension("distill.temperature=1..8")], trials=3))
    try:
        at = page("search")
        at.run()
        assert not at.exception, at.exception
        assert at.selectbox(key="search_select").value == sweep_id  # the newest first
        bars = [b.proto.text for b in at.get("progress")]
        assert any(text.startswith(("queued:", "running:")) and "/3 trials" in text for text in bars), bars
        at.button(key=f"search_cancel_{sweep_id}").click().run()
        assert not at.exception, at.exception
        assert manager.wait_sweep(sweep_id, timeout=120) == RunStatus.CANCELLED
    finally:
        manager.cancel_sweep(sweep_id)
        manager.wait_sweep(sweep_id, timeout=120)
    at = page("search")
    at.session_state["search_sweep"] = sweep_id
    at.run()
    assert not at.exception, at.exception
    assert any(b.key == f"search_resume_{sweep_id}" for b in at.button)  # stopped: offered again, not resumed


def test_search_figures_colour_trials_by_state_on_a_real_study():
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from dashboard import figures
    study = optuna.create_study(direction="maximize")
    space = {"distill.temperature": FloatDistribution(1, 8, log=True)}
    for value in (0.5, 0.7):
        study.tell(study.ask(space), value)
    pruned = study.ask(space)
    pruned.report(0.3, 1)
    pruned.report(0.35, 2)
    study.tell(pruned, state=TrialState.PRUNED)
    study.tell(study.ask(space), state=TrialState.FAIL)
    study.tell(study.ask(space), state=TrialState.FAIL)  # a stopped trial: 'cancelled' in sweep.json
    fig = figures.search_history(study, {4: "cancelled"}, picked=1)
    traces = {t.name: t for t in fig.data}
    assert list(traces["best so far"].y) == [0.5, 0.7] and list(traces["picked"].x) == [1]
    assert list(traces["pruned"].x) == [2] and list(traces["pruned"].y) == [0.35]  # its last reported epoch
    assert list(traces["failed"].x) == [3] and list(traces["failed"].y) == [0.5]   # on the floor
    assert list(traces["cancelled"].x) == [4]
    for state in ("finished", "pruned", "failed", "cancelled"):
        assert traces[state].marker.color == figures.STATE_COLOURS[state]
    assert not figures.is_empty(figures.search_parallel(study))
    assert not figures.is_empty(figures.search_importance(study))
    one = optuna.create_study(direction="maximize")
    one.tell(one.ask(space), 0.5)
    assert "at least 2 finished trials (1 so far)" in figures.search_importance(one).layout.meta["message"]
    rows = [{"trial": 0, "point": "p", "kd_val_acc": 0.5, "kd_val_acc_std": 0.01, "latency_ms": 1.5,
             "kd_test_acc_mean": 0.4, "student_params": 1000}]
    scatter = figures.search_scatter(rows, best=0)
    assert [t.name for t in scatter.data] == ["finished", "picked"]
    assert "not used to choose" in scatter.data[0].hovertext[0]  # test accuracy only beside
