"""A run's lifecycle: the status type, final_status, the resumable check and record_run against a real store."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from core.errors import Cancelled, ConfigError, KdlabError
from core.lifecycle import NotResumable, RunStatus, check_resumable, final_status
from core.store import ACTIVE, FINISHED, RESUMABLE, RUN_STATUSES, Heartbeat, RunStore, record_run
from core.train import Event, EventBus

CONFIG = {"name": "tiny", "teachers": [{"model": "test_resnet"}]}


def test_run_status_is_a_string_in_python_and_in_sqlite():
    assert RunStatus.DONE == "done" and "done" == RunStatus.DONE
    assert f"{RunStatus.INTERRUPTED}|{RunStatus.DONE:>6}" == "interrupted|  done"
    assert [s.value for s in RUN_STATUSES] == ["queued", "running", "done", "failed", "cancelled", "interrupted",
                                             "pruned"]
    assert ACTIVE == ("queued", "running") and "running" in ACTIVE and "done" not in ACTIVE
    assert set(FINISHED) == {"done", "failed", "cancelled", "interrupted", "pruned"}
    assert set(RESUMABLE) == {"interrupted", "failed", "cancelled"}
    assert RunStatus.ACTIVE is ACTIVE  # the store's names are the enum's groups
    conn = sqlite3.connect(":memory:")
    assert conn.execute("SELECT ?", (RunStatus.CANCELLED,)).fetchone() == ("cancelled",)


@pytest.mark.parametrize("exc, shutting_down, expected", [
    (None, False, (RunStatus.DONE, None)),
    (None, True, (RunStatus.DONE, None)),  # it finished before the shutdown reached it
    (Cancelled("cancelled"), False, (RunStatus.CANCELLED, None)),
    (Cancelled("cancelled"), True, (RunStatus.INTERRUPTED, None)),
    (KeyboardInterrupt(), False, (RunStatus.CANCELLED, None)),
    (KeyboardInterrupt(), True, (RunStatus.INTERRUPTED, None)),
    (ConfigError("train.lr", "must be > 0\n(got -1)", "set train.lr=0.01"),
     False, (RunStatus.FAILED, "train.lr: must be > 0 (got -1); set train.lr=0.01")),
    (ValueError("boom"), False, (RunStatus.FAILED, "ValueError: boom")),
    (ValueError("boom"), True, (RunStatus.FAILED, "ValueError: boom")),  # a crash is a crash, shutdown or not
    (SystemExit(3), False, (RunStatus.INTERRUPTED, None)),
])
def test_final_status_of_each_way_a_run_ends(exc, shutting_down, expected):
    status, error = final_status(exc, shutting_down=shutting_down)
    assert (status, error) == expected and isinstance(status, RunStatus)


def test_one_resumable_check_with_one_message():
    for status in ("interrupted", "failed", "cancelled"):
        check_resumable("r1", status)
    with pytest.raises(NotResumable, match=r"^run r1: cannot be resumed: it is done; resume only interrupted"):
        check_resumable("r1", RunStatus.DONE)
    with pytest.raises(NotResumable, match="it is still running"):
        check_resumable("r1", "running")
    assert issubclass(NotResumable, KdlabError)  # the CLI prints it in one line, pages beside the button


# -- record_run against a real store ----------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    with RunStore(tmp_path) as s:
        yield s


def _started(store: RunStore) -> str:
    run_id = store.create_run(CONFIG, status="running", source="cli")
    store.run_dir_for(run_id).mkdir()
    return run_id


def _train_a_little(recorder) -> None:
    bus = EventBus(recorder)
    bus.emit(Event("start", "teacher/a/s0", step=0, metrics={"total_steps": 4}))
    bus.emit(Event("epoch", "teacher/a/s0", step=2, epoch=1, metrics={"val/acc": 0.5}))


def test_a_run_that_finishes_is_done_with_its_events(store):
    run_id = _started(store)
    with record_run(store, run_id, store.run_dir_for(run_id), 1) as recorder:
        _train_a_little(recorder)
    run = store.get_run(run_id)
    assert (run.status, run.error, run.progress, run.eta) == ("done", None, 1.0, 0.0)
    assert [e["kind"] for e in store.events(run_id)] == ["start", "epoch"]  # nothing added to a clean end


@pytest.mark.parametrize("exc, error, message", [
    (ConfigError("data.name", "unknown data set 'x'"), "data.name: unknown data set 'x'",
     "data.name: unknown data set 'x'"),
    (ZeroDivisionError("division by zero"), "ZeroDivisionError: division by zero", "Traceback"),
])
def test_a_failing_run_is_failed_with_its_error_and_the_exception_goes_on(store, exc, error, message):
    run_id = _started(store)
    with pytest.raises(type(exc)) as raised:
        with record_run(store, run_id, store.run_dir_for(run_id), 1) as recorder:
            _train_a_little(recorder)
            raise exc
    assert raised.value is exc
    run = store.get_run(run_id)
    assert (run.status, run.error) == ("failed", error)
    last = store.events(run_id)[-1]
    assert last["kind"] == "failed" and message in last["message"]
    if message == "Traceback":  # not a user error: whoever debugs it gets the traceback
        assert "ZeroDivisionError: division by zero" in last["message"]


@pytest.mark.parametrize("shutting_down, status, message", [
    (False, "cancelled", "cancelled by user"),
    (True, "interrupted", "stopped: the app shut down"),
])
def test_a_stopped_run_is_cancelled_or_interrupted_when_the_app_shuts_down(store, shutting_down, status, message):
    run_id = _started(store)
    beats = Heartbeat(store, interval=60)  # shared, as the job manager's: beaten by hand below
    try:
        with pytest.raises(Cancelled):
            with record_run(store, run_id, store.run_dir_for(run_id), 2, heartbeat=beats,
                            shutting_down=lambda: shutting_down) as recorder:
                _train_a_little(recorder)
                raise Cancelled("cancelled")
        beats.beat()  # a beat after the end must not bring the run back to 'running'
    finally:
        beats.stop()
    run = store.get_run(run_id)
    assert run.status == status and run.resumable and run.error is None
    assert 0 < run.progress < 1  # kept where it stopped
    assert store.events(run_id)[-1]["message"] == message


def test_the_final_status_survives_a_store_that_cannot_take_the_whole_finish(store, caplog):
    caplog.set_level(logging.WARNING, logger="core")
    run_id = _started(store)
    with pytest.raises(KeyError):
        with record_run(store, run_id, store.run_dir_for(run_id), 1):
            # The stored results are damaged meanwhile: finish_run cannot read the run back.
            conn = sqlite3.connect(store.db_path)
            with conn:
                conn.execute("UPDATE runs SET results = '{bad json' WHERE id = ?", (run_id,))
            conn.close()
            raise KeyError("x")
    status, error = store._read("SELECT status, error FROM runs WHERE id = ?", (run_id,))[0]
    assert (status, error) == ("failed", "KeyError: 'x'")  # the bare status went in
    assert any("results were not stored" in r.getMessage() for r in caplog.records)


def test_a_closed_store_costs_a_warning_not_the_run(store, caplog):
    caplog.set_level(logging.WARNING, logger="core")
    run_id = _started(store)
    with record_run(store, run_id, store.run_dir_for(run_id), 1) as recorder:
        _train_a_little(recorder)
        store.close()  # e.g. the app closed the store under a running job
    assert any("status done is lost" in r.getMessage() for r in caplog.records)
    assert RunStore(store.data_dir).get_run(run_id).status == "running"  # the reaper's business later
