"""The `processes` executor: trials in worker processes give the local executor's results, a killed
worker's trial is retried, Cancel stops every worker, and its options are checked."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import pytest
from click.testing import CliRunner

from core import config
from core.cli import main
from core.errors import Cancelled, ConfigError
from core.lifecycle import RunStatus
from core.search.engine import run_search
from core.search.space import parse_dimension
from core.search.spec import make_spec
from core.store import RunStore
from core.train import CancelToken

TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}]", "student.model=test_byobnet", "student.width=null", "student.seeds=1",
        "distill.teaching=cached"]
GRID = [parse_dimension("distill.temperature=1,2,4,8")]


def tiny(*extra: str) -> config.RunConfig:
    return config.load(overrides=TINY + list(extra))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_worker_processes_give_the_local_results_for_the_same_seeds(tmp_path):
    import torch

    base = tiny()
    previous = torch.get_num_threads()
    # One thread everywhere: the workers' count (2 cores // 2 workers) for the students, and for the
    # teachers, which both searches train in this process (float sums depend on the thread count).
    torch.set_num_threads(1)
    try:
        with RunStore(tmp_path / "local") as store:
            local = run_search(base, make_spec(base, search="grid", space=GRID), tmp_path / "local" / "sweep",
                               store=store)
        spec = make_spec(base, search="grid", space=GRID, executor="processes", workers=2)
        with RunStore(tmp_path / "par") as store:
            parallel = run_search(base, spec, tmp_path / "par" / "sweep", store=store)
            trials = store.trials(store.find_sweep_by_dir(tmp_path / "par" / "sweep").id)
            sweep = store.find_sweep_by_dir(tmp_path / "par" / "sweep")
    finally:
        torch.set_num_threads(previous)
    assert sweep.status == RunStatus.DONE and len(trials) == 4 and {t.status for t in trials} == {RunStatus.DONE}
    assert os.getpid() not in {t.pid for t in trials} and len({t.pid for t in trials}) == 2  # two workers ran them
    by_point = {r.point: r for r in local.rows}
    assert sorted(by_point) == sorted(r.point for r in parallel.rows)  # every grid point once, none twice
    for row in parallel.rows:
        twin = by_point[row.point]
        assert (row.kd_val_acc, row.kd_test_acc_mean, row.scratch_test_acc_mean) == \
            (twin.kd_val_acc, twin.kd_test_acc_mean, twin.scratch_test_acc_mean)


def _run_in_thread(base, spec, out, store, cancel=None) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def target() -> None:
        try:
            box["result"] = run_search(base, spec, out, store=store, cancel=cancel)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _wait_for_training_trial(store: RunStore, out, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        sweep = store.find_sweep_by_dir(out)
        for record in store.trials(sweep.id) if sweep else []:
            if record.status == RunStatus.RUNNING and store.events(record.id, kinds=["epoch"]):
                return record
        time.sleep(0.2)
    pytest.fail("no trial started training in time")


def test_a_killed_worker_s_trial_is_retried_and_nothing_else_is_lost(tmp_path):
    base = tiny("student.epochs=8")
    spec = make_spec(base, search="grid", space=GRID, executor="processes", workers=2)
    out = tmp_path / "sweep"
    with RunStore(tmp_path) as store:
        thread, box = _run_in_thread(base, spec, out, store)
        victim = _wait_for_training_trial(store, out)
        os.kill(victim.pid, signal.SIGKILL)
        thread.join(300)
        assert "error" not in box, box.get("error")
        sweep = store.find_sweep_by_dir(out)
        trials = store.trials(sweep.id)
        retried = store.get_run(victim.id)
    assert sweep.status == RunStatus.DONE and len(box["result"].rows) == 4
    assert [t.status for t in trials] == [RunStatus.DONE] * 4  # the killed trial kept its row, and finished
    assert retried.status == RunStatus.DONE and retried.attempts == 2 and retried.pid != victim.pid
    states = sorted(t.state for t in box["result"].trials)
    assert states == ["finished"] * 4 + ["interrupted"]  # the stopped attempt, shown as such
    assert (out / "workers" / "0.log").is_file()


def test_cancel_stops_every_worker(tmp_path):
    base = tiny("student.epochs=30")
    spec = make_spec(base, search="grid", space=GRID, executor="processes", workers=2)
    out = tmp_path / "sweep"
    cancel = CancelToken()
    with RunStore(tmp_path) as store:
        thread, box = _run_in_thread(base, spec, out, store, cancel)
        _wait_for_training_trial(store, out)
        pids = {r.pid for r in store.trials(store.find_sweep_by_dir(out).id)}
        cancel.cancel()
        thread.join(120)
        assert isinstance(box.get("error"), Cancelled)
        sweep = store.find_sweep_by_dir(out)
        trials = store.trials(sweep.id)
    assert sweep.status == RunStatus.CANCELLED
    assert trials and {t.status for t in trials} <= {RunStatus.CANCELLED, RunStatus.DONE}
    assert not any(_alive(pid) for pid in pids)


def test_executor_options_are_checked(caplog):
    base = tiny()
    with pytest.raises(ConfigError) as err:
        make_spec(base, search="grid", space=GRID, executor="cluster")
    assert err.value.field == "--executor"
    with pytest.raises(ConfigError) as err:
        make_spec(base, search="grid", space=GRID, workers=2)
    assert err.value.field == "--workers"
    with caplog.at_level(logging.WARNING):
        spec = make_spec(base, search="grid", space=GRID, executor="processes", workers=(os.cpu_count() or 1) + 2)
    assert spec.workers == (os.cpu_count() or 1) + 2 and "more than this machine's" in caplog.text
    assert spec.command_args()[-4:] == ["--executor", "processes", "--workers", str(spec.workers)]
    with pytest.raises(ConfigError) as err:
        make_spec(base, search="grid", space=GRID, ray_address="10.0.0.1:6379")
    assert err.value.field == "--ray-address"
    res = CliRunner().invoke(main, ["sweep", *sum((["--set", s] for s in TINY), []), "--grid",
                                    "distill.temperature=1,2", "--executor", "processes", "--workers", "0"])
    assert res.exit_code == 2 and "--workers" in res.output
