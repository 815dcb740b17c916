"""Every dashboard page's logic through AppTest: validation, a tiny job launched and its results shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import config

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "dashboard" / "app.py")
PAGES = ROOT / "dashboard" / "views"
TINY = {"name": "tiny", "data": {"name": "shapes", "count": 240, "image_size": 16},
        "teachers": [{"model": "test_resnet", "seeds": 2}, {"model": "test_efficientnet"}],
        "student": {"model": "test_byobnet", "width": None, "seeds": 2},
        "train": {"epochs": 2, "batch_size": 32}}


def page(name: str) -> AppTest:
    """A page script run on its own (the project root is on sys.path in tests)."""
    return AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=120)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _values(array) -> list:
    """A plotly JSON array as a list: plain, or the typed form ({"dtype", "bdata"}) plotly >= 6 writes."""
    if isinstance(array, dict):
        import base64

        import numpy as np
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


@pytest.fixture(scope="module")
def finished_run():
    """A tiny run launched from the Setup page and trained by the shared JobManager."""
    at = page("setup")
    at.session_state["loaded_config"] = TINY
    at.run()
    assert not at.exception, at.exception
    assert not any("Fix before launching" in h.value for h in at.subheader)
    at.button(key="launch").click().run()
    assert not at.exception, at.exception
    run_id = at.session_state["selected_run"]
    assert any(run_id in s.value for s in at.success)
    from dashboard.state import job_manager
    assert job_manager().wait(run_id, timeout=600) == "done"
    return run_id


def test_setup_validates_inline_and_blocks_launch():
    at = page("setup")
    at.run()
    at.text_input(key="student_model").set_value("no_such_net_xyz").run()
    assert not at.exception
    assert any("student.model" in e.value for e in at.error), [e.value for e in at.error]


def test_setup_shows_the_scheme_formula_and_student_ratio():
    at = page("setup")
    at.run()
    at.selectbox(key="scheme").set_value("uncertainty").run()
    assert any("Dirichlet" in c.value for c in at.code)
    ratio = next(m for m in at.metric if m.label == "student params")
    assert "x the mean teacher" in ratio.delta


def test_runs_page_lists_the_run_with_progress_and_curves(finished_run):
    from dashboard.state import run_store
    at = page("runs")
    at.session_state["selected_run"] = finished_run
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["status"] == "done" and metrics["progress"] == "100%"
    (epochs,) = charts(at)  # val loss and val accuracy per model per epoch, two panels of one chart
    assert [a["text"] for a in epochs["layout"]["annotations"]] == ["val/loss", "val/acc"]
    stored = run_store().epoch_metrics(finished_run)
    sources = set(stored["source"])
    assert {t["name"] for t in epochs["data"]} == sources and len(epochs["data"]) == 2 * len(sources)
    assert sum(t.get("showlegend", True) is not False for t in epochs["data"]) == len(sources)  # one legend
    at.segmented_control(key=f"curves_{finished_run}").set_value("per step").run()
    assert not at.exception, at.exception
    (steps,) = charts(at)  # the step metric instead
    # The step curves are the store's step events, one line per trained model, in step order.
    stored = run_store().step_metrics(finished_run, ["train/loss"])
    assert steps["layout"]["title"]["text"].startswith("train/loss per step")
    assert steps["layout"]["xaxis"]["title"]["text"] == "step"
    assert {t["name"] for t in steps["data"]} == set(stored["source"])
    for trace in steps["data"]:
        xs = _values(trace["x"])
        assert list(xs) == sorted(stored.loc[stored["source"] == trace["name"], "step"])
    assert at.selectbox(key=f"step_metric_{finished_run}").value == "train/loss"  # the run also logged lr


def test_tradeoff_page_plots_and_offers_the_csv(finished_run):
    at = page("tradeoff")
    at.session_state["selected_run"] = finished_run
    at.run()
    assert not at.exception, at.exception
    assert len(charts(at)) == 2
    assert at.get("download_button")
    table = at.dataframe[0].value
    assert {"teacher", "ensemble", "student"} <= set(table["kind"])


def test_tradeoff_shows_what_ships_and_offers_the_export(finished_run):
    from core.export import export_model
    from dashboard.state import run_store
    run_dir = run_store().get_run(finished_run).run_dir
    export_model(run_dir, run_dir / "exports" / "shipped", formats=["onnx"], quantize="int8", timing_seconds=0.2,
                 int8_max_drop=0.05)
    at = page("tradeoff")
    at.session_state["selected_run"] = finished_run
    at.run()
    assert not at.exception, at.exception
    latency = charts(at)[0]
    shipped = [t for t in latency["data"] if t.get("name") == "shipped"]
    assert shipped and len(shipped[0]["x"]) == 2  # onnxruntime fp32 and int8
    assert any("onnxruntime int8" in str(h) for h in shipped[0]["hovertext"])
    assert any(h.value == "Export" for h in at.subheader)  # the Export panel sits under the table
    assert any(b.key.startswith("export_start") for b in at.button)


def test_diagnostics_page_draws_every_panel(finished_run):
    at = page("diagnostics")
    at.session_state["selected_run"] = finished_run
    at.run()
    assert not at.exception, at.exception
    drawn = charts(at)
    assert len(drawn) >= 7  # bvd, growth, student variance, correlation, reliability, weights, gallery
    empty = [c["layout"].get("meta", {}).get("message") for c in drawn if c["layout"].get("meta", {}).get("empty")]
    assert not empty, empty  # every panel has data (results.json v2 writes "error": null when all went well)


def test_compare_loads_a_config_back_into_setup(finished_run):
    at = page("compare")
    at.run()
    assert not at.exception, at.exception
    assert finished_run in list(at.dataframe[0].value["run"])


def test_a_run_without_results_shows_a_message(finished_run, tmp_path):
    from dashboard.state import run_store
    store = run_store()
    run_id = store.create_run(config.validate(TINY).to_dict(), name="broken", run_dir=tmp_path / "gone")
    store.finish_run(run_id, "done")  # finished, but its results never reached the store
    at = page("tradeoff")
    at.session_state["selected_run"] = run_id
    at.run()
    assert not at.exception, at.exception
    assert any("no stored results" in w.value for w in at.warning)


SWEEP_TINY = {**TINY, "teachers": [{"model": "test_resnet"}], "train": {"epochs": 1, "batch_size": 32},
              "student": {"model": "test_byobnet", "width": None, "seeds": 1}}


def sweep_form(axis: str, values: str) -> AppTest:
    """The Setup page on SWEEP_TINY with the sweep form's first axis filled in."""
    at = page("setup")
    at.session_state["loaded_config"] = SWEEP_TINY
    at.run()
    at.selectbox(key="sweep_axis_0").set_value(axis).run()
    at.text_input(key="sweep_values_0").set_value(values).run()
    return at


@pytest.fixture(scope="module")
def launched_sweep():
    """A two-point sweep launched from the Setup page and trained by the shared JobManager."""
    at = sweep_form("distill.temperature", "1, 3")
    assert not at.exception, at.exception
    assert any("2 point(s) x 1 seed(s): 4 trainings" in c.value for c in at.caption)
    at.button(key="sweep_launch").click().run()
    assert not at.exception, at.exception
    folder = Path(at.session_state["sweep_dir"])
    assert any(folder.name in s.value for s in at.success)
    from dashboard.state import job_manager
    assert job_manager().wait_sweep(folder.name, timeout=600) == "done"
    return folder


def test_setup_refuses_a_bad_sweep_axis_by_name():
    at = sweep_form("distill.alpha", "0.5, 2")
    assert any(e.value.startswith("distill.alpha:") and "grid point" in e.value for e in at.error)
    at.text_input(key="sweep_values_0").set_value("").run()
    assert at.button(key="sweep_launch").disabled  # no axis, nothing to launch


def test_a_sweep_launched_on_setup_shows_its_points_and_progress_on_compare(launched_sweep):
    at = page("compare")
    at.session_state["sweep_dir"] = str(launched_sweep)
    at.run()
    assert not at.exception, at.exception
    bars = [b.proto.text for b in at.get("progress")]
    assert any(launched_sweep.name in text and "done, 2/2 points" in text for text in bars), bars
    assert list(at.dataframe[0].value["point"]) == ["distill.temperature=1", "distill.temperature=3"]
    assert "sweep_resume" not in [b.key for b in at.button]  # nothing left to resume


def test_a_stopped_sweep_is_offered_for_resume_and_finishes(launched_sweep, tmp_path):
    import os
    import shutil
    stopped = launched_sweep.parent / "sweep-stopped"
    shutil.copytree(launched_sweep, stopped)
    saved = json.loads((stopped / "sweep.json").read_text())
    (stopped / "sweep.json").write_text(json.dumps({**saved, "rows": saved["rows"][:1], "best": 0}))
    os.utime(stopped / "events.jsonl", (0, 0))  # last written long ago: nobody is training it
    at = page("compare")
    at.session_state["sweep_dir"] = str(stopped)
    at.run()
    assert any("1 of 2 points are done" in w.value for w in at.warning)
    at.button(key="sweep_resume").click().run()
    assert not at.exception, at.exception
    from dashboard.state import job_manager
    assert job_manager().wait_sweep(stopped.name, timeout=600) == "done"
    rows = json.loads((stopped / "sweep.json").read_text())["rows"]
    assert [r["point"] for r in rows] == ["distill.temperature=1", "distill.temperature=3"]


def test_runs_page_says_when_a_sweep_holds_the_queue():
    from core.sweep import parse_axis
    from dashboard.state import job_manager
    manager = job_manager()
    cfg = config.validate({**SWEEP_TINY, "student": {**SWEEP_TINY["student"], "epochs": 30}})
    sweep_id = manager.submit_sweep(cfg, [parse_axis("distill.temperature=2")], seeds=1)
    try:
        at = page("runs")
        at.run()
        assert not at.exception, at.exception
        assert any(sweep_id in i.value and "Compare page" in i.value for i in at.info), [i.value for i in at.info]
    finally:
        manager.cancel_sweep(sweep_id)
        manager.wait_sweep(sweep_id, timeout=120)
