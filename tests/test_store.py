"""The run store: schema, events since a seq, concurrent writers, interrupted runs, damaged data, CLI records."""

from __future__ import annotations

import sqlite3
from pathlib import Path
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from core.cli import main
from core.store import (SCHEMA_VERSION, RunNotFound, RunStatus, RunStore, StoreError, StoreRecorder,
                        default_data_dir, downsample, downsample_indices)
from core.train import Event

CONFIG = {"name": "tiny", "teachers": [{"model": "test_resnet"}]}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def _sql(store: RunStore, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(store.db_path)
    with conn:
        conn.execute(sql, params)
    conn.close()


def _step(i: int, source: str = "teacher/a/s0") -> Event:
    return Event("step", source, step=i, epoch=1, metrics={"train/loss": 1.0 / (i + 1), "lr": 0.1})


def test_new_store_has_the_current_schema_version_in_wal_mode(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert (tmp_path / "runs" / "kdlab.db").is_file()
    assert store.schema_version() == SCHEMA_VERSION == 2
    assert store.journal_mode == "wal"
    store.close()
    assert RunStore(tmp_path / "runs").schema_version() == SCHEMA_VERSION  # reopening keeps it


@pytest.mark.parametrize("case", ["newer", "older", "foreign"])
def test_other_schema_versions_are_refused_with_a_clear_message(tmp_path, case):
    store = RunStore(tmp_path)
    store.close()
    if case == "newer":
        _sql(store, f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
        expected = "newer kdlab"
    elif case == "older":
        _sql(store, "UPDATE schema_version SET version = 0")
        expected = "cannot upgrade"
    else:
        _sql(store, "DROP TABLE schema_version")
        expected = "not a kdlab run database"
    with pytest.raises(StoreError, match=expected) as err:
        RunStore(tmp_path)
    assert str(store.db_path) in str(err.value)


def _add_tags(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE runs ADD COLUMN tags TEXT")


def _broken(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE runs ADD COLUMN tags TEXT")
    raise sqlite3.OperationalError("disk I/O error")


def test_an_older_database_is_migrated_in_one_transaction(tmp_path):
    with RunStore(tmp_path) as old:
        run_id = old.create_run(CONFIG, status="running", source="cli")
        old.append_events(run_id, [_step(1)])
    now = SCHEMA_VERSION

    class Broken(RunStore):  # a layout whose step up from the current version fails half-way
        schema_version_target = now + 1
        migrations = {now: _broken}

    with pytest.raises(StoreError, match="disk I/O error"):
        Broken(tmp_path)
    with RunStore(tmp_path) as unchanged:  # rolled back: still the current version, no half-added column
        assert unchanged.schema_version() == now and unchanged.get_run(run_id).status == "running"

    class Tagged(RunStore):
        schema_version_target = now + 1
        migrations = {now: _add_tags}

    with Tagged(tmp_path) as new:
        assert new.schema_version() == now + 1
        assert new.get_run(run_id).status == "running" and new.last_seq(run_id) == 1  # nothing lost
        assert "tags" in {r[1] for r in new._read("PRAGMA table_info(runs)")}
    with pytest.raises(StoreError, match="newer kdlab"):  # and this kdlab now refuses it, as any newer file
        RunStore(tmp_path)


def test_a_version_1_store_gains_sweeps_and_keeps_every_run_and_event(tmp_path):
    """A store written before sweeps were rows (the dump of a real version-1 file) upgrades in place."""
    conn = sqlite3.connect(tmp_path / "kdlab.db")
    conn.executescript((Path(__file__).parent / "fixtures" / "store_v1.sql").read_text())
    conn.close()
    with RunStore(tmp_path, reap=False) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        done, stopped = "20261101-120000-old-run-ab12", "20261101-130000-old-run-cd34"
        assert store.get_run(done).status == "done" and store.get_run(stopped).status == "interrupted"
        assert [e["kind"] for e in store.events(done)] == ["start", "epoch"]
        assert store.events(done)[1]["metrics"] == {"val/acc": 0.5}
        assert store.get_run(done).sweep_id is None and store.sweeps() == []
        store.set_status(stopped, RunStatus.PRUNED)  # the rebuilt table takes the new status
        assert store.get_run(stopped).status is RunStatus.PRUNED
        store.delete_run(done)  # and the events table still cascades from runs
        assert store._read("SELECT COUNT(*) FROM events WHERE run_id = ?", (done,))[0][0] == 0
        assert store.last_seq(stopped) == 1


def test_corrupt_database_file_names_the_path_and_the_fix(tmp_path):
    (tmp_path / "kdlab.db").write_bytes(b"this is not sqlite" * 300)
    with pytest.raises(StoreError) as err:
        RunStore(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "kdlab.db") in message and "move it aside" in message
    assert f"kdlab store recover --store '{tmp_path}'" in message  # the command that does it
    assert "\n" not in message


def test_events_are_appended_and_read_back_since_a_seq(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG, status="running", source="cli")
    assert store.events(run_id) == [] and store.last_seq(run_id) == 0
    assert store.append_events(run_id, [Event("start", "teacher/a/s0", step=0, metrics={"total_steps": 10})]) == 1
    assert store.append_events(run_id, [_step(i) for i in range(1, 4)], progress=0.25, eta=9.0) == 4
    newer = store.events(run_id, since=2)
    assert [e["seq"] for e in newer] == [3, 4]
    assert newer[0] == {"seq": 3, "time": newer[0]["time"], "kind": "step", "source": "teacher/a/s0", "step": 2,
                        "epoch": 1, "metrics": {"train/loss": pytest.approx(1 / 3), "lr": 0.1}, "message": ""}
    assert store.events(run_id, since=4) == []
    assert [e["kind"] for e in store.events(run_id, kinds=["start"])] == ["start"]
    run = store.get_run(run_id)
    assert (run.progress, run.eta, run.status, run.source) == (0.25, 9.0, "running", "cli")
    assert run.status is RunStatus.RUNNING and run.to_dict()["status"] == "running"


def test_concurrent_writers_and_readers_from_many_threads(tmp_path):
    store = RunStore(tmp_path)
    shared = store.create_run(CONFIG, status="running")
    per_thread, threads, errors, polled = 150, 4, [], []
    start = threading.Barrier(threads + 2)

    def write(k: int) -> None:
        try:
            start.wait()
            own = store.create_run({**CONFIG, "name": f"w{k}"}, status="running")
            for i in range(per_thread):
                store.append_events(shared, [_step(i, f"teacher/w{k}/s0")])
                if i % 10 == 0:
                    store.append_events(own, [_step(j) for j in range(10)], progress=i / per_thread)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def read() -> None:
        start.wait()
        seen, deadline = 0, time.time() + 60
        while seen < threads * per_thread and not errors and time.time() < deadline:
            for e in store.events(shared, since=seen):
                assert e["seq"] == seen + 1  # no gap, no duplicate, in order
                seen = e["seq"]
            polled.append(seen)
            store.list_runs()

    workers = [threading.Thread(target=write, args=(k,)) for k in range(threads)]
    def open_another() -> None:  # another session opening the same store meanwhile
        start.wait()
        RunStore(tmp_path).list_runs()

    workers += [threading.Thread(target=read), threading.Thread(target=open_another)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert not errors, errors
    assert store.last_seq(shared) == threads * per_thread
    seqs = [e["seq"] for e in store.events(shared)]
    assert seqs == list(range(1, threads * per_thread + 1))
    runs = store.list_runs()
    assert len(runs) == threads + 1 and set(runs["status"]) == {"running"}
    assert polled[-1] == threads * per_thread


def test_run_whose_process_died_is_interrupted_and_keeps_its_events(tmp_path):
    store = RunStore(tmp_path)
    dead = store.create_run(CONFIG, status="running", source="cli")
    stale = store.create_run(CONFIG, status="queued")
    alive = store.create_run(CONFIG, status="running")
    store.append_events(dead, [_step(i) for i in range(5)])
    _sql(store, "UPDATE runs SET pid = ? WHERE id = ?", (_dead_pid(), dead))
    # Our own pid is alive, but nothing has beaten for an hour: its owner hung or the pid was reused.
    _sql(store, "UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time() - 3600, stale))
    store.close()

    reopened = RunStore(tmp_path)
    assert reopened.get_run(dead).status == "interrupted"
    assert reopened.get_run(stale).status == "interrupted"
    assert reopened.get_run(alive).status == "running"
    events = reopened.events(dead)
    assert [e["kind"] for e in events] == ["step"] * 5 + ["info"]
    assert "interrupted" in events[-1]["message"]
    assert reopened.get_run(dead).resumable
    listed = reopened.list_runs().set_index("id")
    assert listed.loc[dead, "status"] == "interrupted" and pd.isna(listed.loc[alive, "finished"])
    assert listed.loc[dead, "finished"] >= listed.loc[dead, "created"]


def test_heartbeat_gives_a_live_run_its_status_back(tmp_path):
    store = RunStore(tmp_path, stale_after=60)
    run_id = store.create_run(CONFIG, status="running")
    _sql(store, "UPDATE runs SET heartbeat = ? WHERE id = ?", (time.time() - 120, run_id))
    assert store.reap() == [run_id]
    store.beat({run_id: "running"})  # the owner was only suspended: it is still ours
    assert store.get_run(run_id).status == "running"


def test_unknown_damaged_or_missing_run_gives_a_clear_message(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(RunNotFound, match="no run 'nope'.*kdlab runs"):
        store.get_run("nope")
    with pytest.raises(RunNotFound):
        store.events("nope")
    with pytest.raises(RunNotFound):
        store.append_events("nope", [_step(1)])

    damaged = store.create_run(CONFIG, status="running")
    store.finish_run(damaged, "failed", error="boom")
    _sql(store, "UPDATE runs SET config = '{bad json' WHERE id = ?", (damaged,))
    with pytest.raises(StoreError, match=f"run {damaged}: its stored config is not valid JSON"):
        store.get_run(damaged)
    assert damaged in set(store.list_runs()["id"])  # the listing still works

    gone = store.create_run(CONFIG, status="running")
    store.finish_run(gone, "interrupted")
    assert not store.get_run(gone).dir_exists
    with pytest.raises(StoreError, match="folder .* is missing"):
        store.get_run(gone, require_dir=True)


def test_epoch_metrics_are_tidy_and_long_step_series_are_downsampled(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG, status="running")
    epochs = [Event("epoch", "teacher/a/s0", step=10 * e, epoch=e, metrics={"val/acc": 0.5 + e / 10,
                                                                           "val/loss": 1.0 / e})
              for e in (1, 2, 3)]
    store.append_events(run_id, epochs + [_step(i) for i in range(5000)])
    df = store.epoch_metrics(run_id)
    assert list(df.columns) == ["source", "epoch", "metric", "value"]
    assert len(df) == 6
    assert df.query("metric == 'val/acc'")["value"].tolist() == pytest.approx([0.6, 0.7, 0.8])
    steps = store.step_metrics(run_id, metrics=["train/loss"], max_points=500)
    assert list(steps.columns) == ["source", "step", "metric", "value"]
    assert len(steps) <= 500 and steps["step"].min() == 0 and steps["step"].max() == 4999
    assert len(store.step_metrics(run_id, max_points=None)) == 10_000


def test_downsample_keeps_first_last_and_spikes():
    values = np.zeros(100_000)
    values[12_345] = 50.0   # a loss spike
    values[777] = -3.0
    keep = downsample_indices(values, 2000)
    assert len(keep) <= 2000 and keep[0] == 0 and keep[-1] == len(values) - 1
    assert 12_345 in keep and 777 in keep
    assert (np.diff(keep) > 0).all()
    df = pd.DataFrame({"series": ["a"] * 3000 + ["b"] * 10, "x": list(range(3000)) + list(range(10)),
                       "y": np.r_[np.random.default_rng(0).normal(size=3000), np.ones(10)]})
    small = downsample(df, "x", "y", by="series", max_points=100)
    assert small.groupby("series").size().to_dict() == {"a": 100, "b": 10}


def test_recorder_batches_steps_and_reports_progress_and_eta(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG, status="running")
    now = [1000.0]
    rec = StoreRecorder(store, run_id, tmp_path, total_trainings=2, flush_every=0.5, clock=lambda: now[0])
    rec(Event("start", "teacher/a/s0", step=0, metrics={"total_steps": 10}))
    assert store.last_seq(run_id) == 1  # starts are written at once
    for i in range(1, 6):
        now[0] += 0.01
        rec(_step(i))
    assert store.last_seq(run_id) == 1  # steps wait for the next flush
    assert rec.progress == pytest.approx(0.25)
    now[0] += 1.0
    rec(_step(6))
    assert store.last_seq(run_id) == 7
    run = store.get_run(run_id)
    assert run.progress == pytest.approx(0.3)
    assert run.eta == pytest.approx(1.05 / 0.3 * 0.7)  # elapsed / progress * (1 - progress)
    rec(Event("done", "teacher/a/s0", step=10))
    rec(Event("start", "student/kd-r1/s0", step=0, metrics={"total_steps": 4}))
    rec(Event("step", "student/kd-r1/s0", step=2))
    rec.close()
    assert store.get_run(run_id).progress == pytest.approx(0.75)
    store.finish_run(run_id, "done")
    assert (store.get_run(run_id).progress, store.get_run(run_id).eta) == (1.0, 0.0)


def test_recorder_of_a_resumed_run_keeps_the_stored_progress_until_its_count_passes_it(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG, status="running")
    store.append_events(run_id, [], progress=0.5)  # where the earlier attempt stopped
    rec = StoreRecorder(store, run_id, tmp_path, total_trainings=4)
    rec(Event("stage", "teachers"))
    assert store.get_run(run_id).progress == 0.5  # not 0: this attempt's count starts again from zero
    for source in ("teacher/a/s0", "teacher/b/s0"):  # restored whole: finished as soon as they start
        rec(Event("start", source, step=10, metrics={"total_steps": 10}))
        assert store.get_run(run_id).progress == 0.5
        rec(Event("done", source, step=10))
    assert rec.counted == 0.5  # each counted once
    rec(Event("start", "student/scratch/s0", step=6, metrics={"total_steps": 10}))  # resumed mid-way
    assert store.get_run(run_id).progress == pytest.approx(0.65)
    rec.close()


def test_deleting_a_run_mid_training_does_not_disturb_its_recorder(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run(CONFIG, status="running")
    rec = StoreRecorder(store, run_id, tmp_path, total_trainings=1)
    rec(Event("start", "teacher/a/s0", step=0, metrics={"total_steps": 10}))
    store.finish_run(run_id, "cancelled")
    store.delete_run(run_id)
    rec(Event("epoch", "teacher/a/s0", step=5, epoch=1))  # written nowhere, raises nothing
    rec.close()
    assert rec.errors == 0 and store.run_ids() == []


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDLAB_RUNS", str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("KDLAB_RUNS")
    assert default_data_dir().name == "kdlab-runs"


QUICK = ["--set", "data.name=shapes", "--set", "data.count=100", "--set", "data.image_size=16",
         "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "teachers=[{model: test_resnet}]",
         "--set", "student.model=test_byobnet", "--set", "student.width=null", "--set", "student.seeds=1",
         "--set", "device=cpu", "--quiet"]


def test_cli_records_its_runs_in_the_store_and_lists_them(tmp_path):
    runner = CliRunner()
    store_dir = tmp_path / "store"
    result = runner.invoke(main, ["run", *QUICK, "--store", str(store_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = RunStore(store_dir)
    (row,) = store.list_runs().itertuples()
    assert (row.status, row.source, row.progress) == ("done", "cli", 1.0)
    run = store.get_run(row.id)
    assert run.run_dir == store_dir / row.id and (run.run_dir / "results.json").is_file()
    assert run.results["status"] == "done" and run.summary["kd_test_acc"] == row.kd_test_acc
    assert {"start", "epoch", "done", "stage"} <= {e["kind"] for e in store.events(row.id)}

    # The same folder again is the same run, resumed from its checkpoints (not a second record).
    again = runner.invoke(main, ["run", *QUICK, "--store", str(store_dir), "--out", str(run.run_dir)])
    assert again.exit_code == 0, again.output
    assert len(store.list_runs()) == 1
    assert store.get_run(row.id).attempts == 2 and store.get_run(row.id).status == "done"

    listed = runner.invoke(main, ["runs", "--store", str(store_dir)])
    assert listed.exit_code == 0
    lines = listed.output.strip().splitlines()
    assert lines[0].split() == ["id", "name", "status", "progress", "created", "kd", "test", "acc"]
    assert any(row.id in line and "done" in line and f"{row.kd_test_acc:.4f}" in line for line in lines)


def test_cli_store_problems_exit_2_in_one_line(tmp_path):
    runner = CliRunner()
    no_out = runner.invoke(main, ["run", *QUICK, "--no-store"])
    assert no_out.exit_code == 2 and "--no-store needs an output folder" in no_out.output
    (tmp_path / "kdlab.db").write_bytes(b"garbage" * 500)
    listed = runner.invoke(main, ["runs", "--store", str(tmp_path)])
    assert listed.exit_code == 2
    assert listed.output.startswith("error: store: ") and "move it aside" in listed.output
    assert "`kdlab store recover --store" in listed.output
    assert "Traceback" not in listed.output
    assert runner.invoke(main, ["resume", "nope", "--store", str(tmp_path / "new")]).output.startswith(
        "error: run: no run 'nope'")
