"""JobManager: real tiny jobs run to done, FIFO one at a time, cancel, failures, resume, progress and ETA."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from core import config
from core.errors import Cancelled, ConfigError
from core.jobs import JobError, JobManager, QueueFull, device_key, shared_manager
from core.lifecycle import NotResumable
from core.pipeline import prepare, run_experiment
from core.store import RunStore, StoreError, StoreRecorder, expected_trainings
from core.train import CancelToken, EventBus

# One teacher, one scratch and one distilled student on 100 tiny images: a few seconds per job.
TINY = ["data.name=shapes", "data.count=100", "data.image_size=16", "train.epochs=1", "train.batch_size=16",
        "train.log_every=1", "teachers=[{model: test_resnet}]", "student.model=test_byobnet",
        "student.width=null", "student.seeds=1", "device=cpu"]


def tiny(*extra: str) -> config.RunConfig:
    return config.load(overrides=TINY + list(extra))


@pytest.fixture
def manager(tmp_path):
    jobs = JobManager(RunStore(tmp_path), heartbeat_every=0.5)
    yield jobs
    jobs.shutdown(timeout=30)


def _wait_for(predicate, timeout: float = 60.0, every: float = 0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def test_failing_job_records_its_error_and_the_next_job_runs_to_done(manager):
    store = manager.store
    bad = manager.submit(tiny("data.name=nodata"))
    good = manager.submit(tiny())
    samples = []
    while store.get_run(good).status in ("queued", "running"):
        run = store.get_run(good)
        samples.append((run.progress, run.eta))
        time.sleep(0.02)

    failed = store.get_run(bad)
    assert failed.status == "failed"
    assert failed.error.startswith("data.name: unknown data set 'nodata'")
    assert [e["kind"] for e in store.events(bad)] == ["failed"]

    run = store.get_run(good)
    assert run.status == "done", run.error
    assert run.results["status"] == "done" and run.results["comparison"]
    assert 0.0 <= run.summary["kd_test_acc"] <= 1.0
    assert {"config", "events", "results", "teachers", "students"} <= set(run.artifacts)
    assert (run.run_dir / run.artifacts["teachers"][0]).is_file()
    assert run.started >= failed.finished
    # Progress goes from 0 to 1, never backwards, with an ETA on the way.
    progress = [p for p, _ in samples] + [run.progress]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and run.eta == 0.0
    assert progress == sorted(progress)
    assert any(0 < p < 1 and eta is not None and eta >= 0 for p, eta in samples)
    frame = store.epoch_metrics(good)
    assert set(frame["source"]) == {"teacher/test_resnet/s0", "student/scratch/s0", "student/kd-r1/s0"}


def test_two_submits_at_once_are_queued_and_run_one_at_a_time_in_order_and_cancel(tmp_path):
    jobs = JobManager(RunStore(tmp_path), autostart=False)
    store, barrier, ids = jobs.store, threading.Barrier(2), []

    def submit(name: str) -> None:  # two dashboard sessions pressing "run" at the same moment
        barrier.wait()
        ids.append(jobs.submit(tiny(f"name={name}", "train.epochs=500")))

    threads = [threading.Thread(target=submit, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first, second = ids
    assert first != second and jobs.queued() == ids
    assert [store.get_run(i).status for i in ids] == ["queued", "queued"]

    jobs.start()
    _wait_for(lambda: store.events(first, kinds=["start"]))
    assert jobs.running() == [first] and jobs.queued() == [second]
    assert store.get_run(second).status == "queued"  # one training per device at a time
    assert jobs.cancel(first) is True                 # a running job stops at its next step
    assert jobs.wait(first, timeout=60) == "cancelled"
    _wait_for(lambda: store.events(second, kinds=["start"]))
    assert jobs.cancel(second) is True
    assert jobs.wait(second, timeout=60) == "cancelled"
    a, b = store.get_run(first), store.get_run(second)
    assert a.started < a.finished <= b.started        # FIFO, never two at once
    kinds = [e["kind"] for e in store.events(first)]
    assert "cancelled" in kinds and "done" not in kinds
    assert jobs.cancel(first) is False                # already finished
    assert a.resumable
    jobs.shutdown()


def test_cancel_a_queued_job_removes_it_from_the_queue(tmp_path):
    jobs = JobManager(RunStore(tmp_path), autostart=False)
    waiting, kept = jobs.submit(tiny()), jobs.submit(tiny())
    assert jobs.cancel(waiting) is True
    run = jobs.store.get_run(waiting)
    assert run.status == "cancelled" and run.started is None and jobs.queued() == [kept]
    assert "cancelled before it started" in jobs.store.events(waiting)[-1]["message"]
    jobs.shutdown()


def test_queue_is_bounded_and_shutdown_leaves_waiting_runs_resumable(tmp_path):
    jobs = JobManager(RunStore(tmp_path), max_queued=2, autostart=False)
    first, second = jobs.submit(tiny()), jobs.submit(tiny())
    with pytest.raises(QueueFull, match="2 runs are already waiting"):
        jobs.submit(tiny())
    with pytest.raises(ConfigError, match="train.epochs"):
        jobs.submit({**tiny().to_dict(), "train": {"epochs": 0}})
    assert len(jobs.store.list_runs()) == 2
    jobs.shutdown()
    assert {jobs.store.get_run(i).status for i in (first, second)} == {"interrupted"}
    with pytest.raises(JobError, match="shut down"):
        jobs.submit(tiny())


def test_one_shared_manager_per_store_and_one_worker_key_per_device(tmp_path):
    shared = shared_manager(tmp_path)
    assert shared_manager(tmp_path) is shared  # every dashboard session gets the same queue
    shared.shutdown()
    assert shared_manager(tmp_path) is not shared
    shared_manager(tmp_path).shutdown()
    assert device_key("cpu") == "cpu" and device_key("nonsense") == "nonsense"


def test_a_killed_run_is_interrupted_then_resumed_from_its_checkpoint(tmp_path):
    cfg = tiny("train.epochs=2")
    store = RunStore(tmp_path)
    run_id = store.create_run(cfg, status="running", source="cli")
    out = store.run_dir_for(run_id)
    cancel = CancelToken()

    def kill_after_first_epoch(event) -> None:  # the process "dies" once epoch 1 is checkpointed
        if event.kind == "epoch" and event.source.startswith("teacher/") and event.epoch == 1:
            cancel.cancel()

    recorder = StoreRecorder(store, run_id, out, expected_trainings(cfg))
    with pytest.raises(Cancelled):
        run_experiment(prepare(cfg, out), out, EventBus(recorder, kill_after_first_epoch), cancel)
    recorder.close()
    before = store.events(run_id)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    conn = sqlite3.connect(store.db_path)
    with conn:
        conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead.pid, run_id))
    conn.close()
    store.close()

    jobs = JobManager(RunStore(tmp_path))  # e.g. the app after a restart
    run = jobs.store.get_run(run_id)
    assert run.status == "interrupted" and 0 < run.progress < 1
    assert jobs.store.events(run_id)[: len(before)] == before  # nothing recorded was lost
    assert jobs.resume(run_id) == run_id
    assert jobs.wait(run_id, timeout=120) == "done"
    events = jobs.store.events(run_id)
    teacher = [e for e in events if e["source"] == "teacher/test_resnet/s0"]
    starts = [e for e in teacher if e["kind"] == "start"]
    assert starts[0]["step"] == 0 and starts[1]["step"] == starts[1]["metrics"]["total_steps"] // 2
    assert [e["epoch"] for e in teacher if e["kind"] == "epoch"] == [1, 2]  # epoch 1 was not redone
    run = jobs.store.get_run(run_id)
    assert run.attempts == 2 and run.results["teachers"][0]["epochs_run"] == 2
    with pytest.raises(NotResumable, match="cannot be resumed: it is done"):
        jobs.resume(run_id)

    lost = jobs.store.create_run(cfg, status="running")
    jobs.store.finish_run(lost, "failed", error="boom")
    jobs.store.start_run(lost)
    jobs.store.finish_run(lost, "interrupted")
    with pytest.raises(StoreError, match="folder .* is missing"):
        jobs.resume(lost)
    jobs.shutdown()


# -- sweeps ---------------------------------------------------------------------------------------

def test_a_sweep_job_runs_in_the_queue_after_a_run_and_writes_its_folder(manager, tmp_path):
    from core.sweep import find_sweeps, load_sweep, parse_axis
    run_id = manager.submit(tiny())
    axes = [parse_axis("distill.temperature=1,4")]
    sweep_id = manager.submit_sweep(tiny(), axes, seeds=1)
    assert sweep_id.startswith("sweep-") and manager.sweeps()[0]["status"] == "queued"
    progress = []
    while manager.sweep_active(sweep_id):
        progress.append(manager.sweeps()[0]["progress"])
        if manager.store.get_run(run_id).status in ("queued", "running"):
            assert manager.sweeps()[0]["status"] == "queued"  # one job per device: the sweep waits
        time.sleep(0.02)
    info = manager.sweeps()[0]
    assert info["status"] == "done", info["error"]
    assert manager.store.get_run(run_id).status == "done"
    assert info["points_done"] == info["points"] == 2 and info["progress"] == 1.0
    assert progress == sorted(progress) and any(0 < p < 1 for p in progress)
    record = manager.store.get_sweep(sweep_id)  # a row of the store, its trials runs of it
    assert record.status == "done" and [t.status for t in manager.store.trials(sweep_id)] == ["done", "done"]
    folder = tmp_path / sweep_id
    assert find_sweeps(tmp_path) == [folder]
    assert [r.point for r in load_sweep(folder).rows] == ["distill.temperature=1", "distill.temperature=4"]
    assert manager.queued() == [] and manager.running() == []  # the sweep's trials ran inside its job


def test_a_bad_sweep_is_refused_before_it_is_queued(manager):
    from core.sweep import Axis
    with pytest.raises(ConfigError) as err:
        manager.submit_sweep(tiny(), [Axis("distill.alpha", (0.5, 2.0))])
    assert err.value.field == "distill.alpha"
    with pytest.raises(ConfigError) as err:
        manager.submit_sweep(tiny(), [Axis("train.lr", (0.1,))])  # would retrain the teachers
    assert err.value.field == "train.lr"
    with pytest.raises(ConfigError):
        manager.submit_sweep(tiny(), [])
    assert manager.sweeps() == []


def test_a_cancelled_sweep_resumes_in_its_folder_without_retraining(manager, tmp_path):
    from core.sweep import load_sweep, parse_axis
    axes = [parse_axis("distill.temperature=1,2")]
    # 20 student epochs: the second point is still training when the test cancels it.
    sweep_id = manager.submit_sweep(tiny("student.epochs=20"), axes, seeds=1)
    job = manager._sweeps[sweep_id]
    _wait_for(lambda: job.trials_done >= 1)  # the first point is written
    assert manager.cancel_sweep(sweep_id)
    assert manager.wait_sweep(sweep_id, timeout=60) == "cancelled"
    assert len(load_sweep(tmp_path / sweep_id).rows) == 1
    with pytest.raises(JobError):
        manager.cancel_sweep("sweep-unknown")

    before = len(sweep_events(tmp_path / sweep_id))
    again = manager.resume_sweep(tmp_path / sweep_id)
    assert again == sweep_id
    assert manager.wait_sweep(sweep_id, timeout=120) == "done"
    resumed = manager._sweeps[sweep_id]
    assert resumed is not job and resumed.trials_done == 2
    rows = load_sweep(tmp_path / sweep_id).rows
    assert [r.seeds for r in rows] == [1, 1]
    # After the resume only the second point's distilled student trains (from its last checkpoint, if any); the teacher and
    # the shared scratch student come back from their checkpoints.
    trained = [e["source"] for e in sweep_events(tmp_path / sweep_id)[before:] if e["kind"] == "epoch"]
    assert trained and set(trained) == {"student/kd-r1/s0"} and len(trained) <= 20


def sweep_events(folder) -> list[dict]:
    import json
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_shutdown_leaves_running_and_waiting_sweeps_interrupted(tmp_path):
    from core.sweep import parse_axis
    jobs = JobManager(RunStore(tmp_path))
    axes = [parse_axis("distill.temperature=1,2")]
    running = jobs.submit_sweep(tiny("student.epochs=50"), axes, seeds=1)
    waiting = jobs.submit_sweep(tiny(), axes, seeds=1, out=tmp_path / "sweep-second")
    _wait_for(lambda: jobs._sweeps[running].stage.startswith("trial"))  # past its teacher
    jobs.shutdown(timeout=60)
    statuses = {s["id"]: s["status"] for s in jobs.sweeps()}
    assert statuses == {running: "interrupted", waiting: "interrupted"}
    assert jobs._sweeps[running].stage == "stopped: the app shut down"
