"""The ray executor on a local Ray (2 CPUs) and tiny `shapes` data: trials land in the store, the
same seeds give the local executor's results, a killed Ray worker's trial is recovered, Tune's ASHA
prunes, and bad input (no ray, a dead address) is one line, exit 2, nothing stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'kdlab[ray]')")

from core.cli import main  # noqa: E402
from core.errors import ConfigError  # noqa: E402
from core.lifecycle import RunStatus  # noqa: E402
from core.search.engine import run_search  # noqa: E402
from core.search.ray_executor import check_address  # noqa: E402
from core.search.space import parse_dimension  # noqa: E402
from core.search.spec import make_spec  # noqa: E402
from core.store import RunStore  # noqa: E402

TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]", "student.model=test_byobnet",
        "student.width=null", "student.seeds=1", "distill.teaching=cached"]
GRID = [parse_dimension("distill.temperature=1,4")]


def tiny(*extra: str):
    from core import config
    return config.load(overrides=TINY + list(extra))


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for this module's searches (each search would otherwise start and stop its own)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_a_ray_search_lands_in_the_store_with_the_local_results_for_the_same_seeds(tmp_path):
    import torch

    base = tiny()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the teachers (trained here) and every trial (1 CPU each) at one thread
    try:
        with RunStore(tmp_path / "local") as store:
            local = run_search(base, make_spec(base, search="grid", space=GRID), tmp_path / "local" / "sweep",
                               store=store)
        spec = make_spec(base, search="grid", space=GRID, executor="ray", workers=2)
        with RunStore(tmp_path / "ray") as store:
            remote = run_search(base, spec, tmp_path / "ray" / "sweep", store=store)
            sweep = store.find_sweep_by_dir(tmp_path / "ray" / "sweep")
            trials = store.trials(sweep.id)
            events = {t.id: store.events(t.id) for t in trials}
            epochs = {t.id: store.epoch_metrics(t.id).shape[0] for t in trials}
    finally:
        torch.set_num_threads(previous)
    assert sweep.status == RunStatus.DONE and sweep.progress == 1.0
    assert len(trials) == 2 and {t.status for t in trials} == {RunStatus.DONE}
    for t in trials:  # the driver wrote each trial's events, per-epoch metrics and results into its run row
        assert any("Ray worker, process" in (e.get("message") or "") for e in events[t.id])
        assert epochs[t.id] > 0 and t.results["students"] and t.summary["kd_test_acc"] is not None
        assert t.pid == os.getpid()  # recorded by the driver, not the workers
    by_point = {r.point: r for r in local.rows}
    assert sorted(by_point) == sorted(r.point for r in remote.rows)
    for row in remote.rows:
        twin = by_point[row.point]
        assert (row.kd_val_acc, row.kd_test_acc_mean, row.scratch_test_acc_mean) == \
            (twin.kd_val_acc, twin.kd_test_acc_mean, twin.scratch_test_acc_mean)
    assert (tmp_path / "ray" / "sweep" / "ray").is_dir()  # Tune's experiment folder, kept in the sweep


def _worker_pid(store: RunStore, run_id: str) -> int | None:
    for e in store.events(run_id):
        message = e.get("message") or ""
        if "Ray worker, process" in message:
            return int(message.rsplit("process", 1)[1].strip(" )"))
    return None


def test_a_killed_ray_worker_s_trial_is_run_again_and_nothing_else_is_lost(tmp_path):
    base = tiny("student.epochs=8")
    spec = make_spec(base, search="grid", space=[parse_dimension("distill.temperature=2")], executor="ray", workers=1)
    out = tmp_path / "sweep"
    box: dict = {}
    with RunStore(tmp_path) as store:
        thread = threading.Thread(target=lambda: box.setdefault("result", run_search(base, spec, out, store=store)),
                                  daemon=True)
        thread.start()
        killed, deadline = None, time.time() + 240
        while killed is None and time.time() < deadline and thread.is_alive():
            with RunStore(tmp_path, reap=False) as watcher:
                sweep = watcher.find_sweep_by_dir(out)
                runs = watcher.trials(sweep.id) if sweep else []
                if runs and len(watcher.events(runs[0].id, kinds=["epoch"])) >= 2:
                    killed = _worker_pid(watcher, runs[0].id)
            time.sleep(0.3)
        assert killed is not None, "the trial did not train two epochs in time"
        os.kill(killed, signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive() and "result" in box
        runs = store.trials(store.find_sweep_by_dir(out).id)
        messages = [e.get("message") or "" for e in store.events(runs[0].id)]
    assert len(runs) == 1 and runs[0].status == RunStatus.DONE  # the same run row, finished
    assert any("Ray worker died" in m for m in messages)
    assert _worker_pid_count(messages) == 2  # the trial started in a second worker process
    assert [t.state for t in box["result"].trials] == ["finished"]


def _worker_pid_count(messages: list[str]) -> int:
    return len({m.rsplit("process", 1)[1] for m in messages if "Ray worker, process" in m})


def test_tune_s_asha_prunes_and_pruned_trials_are_marked_pruned(tmp_path):
    # Good learning rates first (the grid's order at seed 0), then a hopeless one: behind the others at
    # its first epochs, it is stopped by ASHA (min 1 epoch, reduction factor 3, as kdlab configures it).
    base = tiny("student.epochs=4")
    spec = make_spec(base, search="grid", space=[parse_dimension("student.lr=0.00001,0.00003,0.1,0.3")],
                     prune="asha", executor="ray", workers=1)
    with RunStore(tmp_path) as store:
        result = run_search(base, spec, tmp_path / "sweep", store=store)
        runs = {r.trial: r for r in store.trials(store.find_sweep_by_dir(tmp_path / "sweep").id)}
    pruned = [t for t in result.trials if t.state == "pruned"]
    finished = [t for t in result.trials if t.state == "finished"]
    assert pruned, [(t.params, t.state) for t in result.trials]
    assert len(pruned) + len(finished) == 4
    for t in pruned:
        assert runs[t.number].status == RunStatus.PRUNED and t.values is None
        assert 0 < t.epochs < 4  # stopped before its last epoch; no scratch twin trained for it
        assert t.number not in {r.trial for r in result.rows}


def test_a_ray_address_that_does_not_answer_is_refused_in_seconds_and_nothing_is_stored(tmp_path):
    started = time.time()
    with pytest.raises(ConfigError, match=r"--ray-address: no Ray head answers at 127\.0\.0\.1:9"):
        check_address("127.0.0.1:9")
    assert time.time() - started < 5
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        check_address("nowhere")
    store_dir = tmp_path / "store"
    res = CliRunner().invoke(main, ["sweep", "--store", str(store_dir), *sum((["--set", s] for s in TINY), []),
                                    "--grid", "distill.temperature=1,4", "--executor", "ray",
                                    "--ray-address", "127.0.0.1:9"])
    assert res.exit_code == 2 and "--ray-address: no Ray head answers at 127.0.0.1:9" in res.output
    assert not (store_dir / "kdlab.db").exists() or not RunStore(store_dir).sweeps()


def test_without_ray_the_executor_says_how_to_install_it(tmp_path):
    # A real interpreter where `import ray` fails: an import hook refuses it before the CLI runs.
    code = ("import sys, importlib.abc\n"
            "class NoRay(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ray' or name.startswith('ray.'):\n"
            "            raise ImportError('no ray here')\n"
            "sys.meta_path.insert(0, NoRay())\n"
            "from core.cli import main\n"
            "main()\n")
    args = ["sweep", "--store", str(tmp_path / "store"), *sum((["--set", s] for s in TINY), []),
            "--grid", "distill.temperature=1,4", "--executor", "ray"]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--executor: ray is not installed (it is an optional extra); pip install 'kdlab[ray]'" in res.stderr
    assert not (tmp_path / "store" / "kdlab.db").exists()


def test_a_cancelled_ray_search_resumes_without_training_its_finished_trials_again(tmp_path):
    from core.errors import Cancelled
    from core.train import CancelToken, EventBus

    base = tiny()
    spec = make_spec(base, search="grid", space=[parse_dimension("distill.temperature=1,2,4")], executor="ray",
                     workers=1)
    out = tmp_path / "sweep"
    cancel = CancelToken()

    def cancel_after_the_first_trial(event) -> None:
        if event.kind == "stage" and event.source == "trial" and "Ray worker" in event.message and \
                "trial 1:" in event.message:
            cancel.cancel()  # the second trial has started: the search stops there

    with RunStore(tmp_path) as store:
        with pytest.raises(Cancelled):
            run_search(base, spec, out, store=store, events=EventBus(cancel_after_the_first_trial), cancel=cancel)
        sweep = store.find_sweep_by_dir(out)
        first = store.trials(sweep.id)
        assert sweep.status == RunStatus.CANCELLED and first[0].status == RunStatus.DONE
        assert first[1].status == RunStatus.CANCELLED
        epochs_before = len(store.events(first[0].id, kinds=["epoch"]))
        result = run_search(base, spec, out, store=store)  # the same search again: `kdlab resume` does this
        sweep = store.find_sweep_by_dir(out)
        runs = store.trials(sweep.id)
        assert sweep.status == RunStatus.DONE and [r.status for r in runs] == [RunStatus.DONE] * 3
        assert len(store.events(first[0].id, kinds=["epoch"])) == epochs_before  # not one epoch again
        assert runs[1].id == first[1].id  # the stopped trial was retried under its run row
    assert sorted(r.value("distill.temperature") for r in result.rows) == [1, 2, 4]


def test_a_gpu_share_is_checked_and_kept_in_the_command():
    base = tiny()
    with pytest.raises(ConfigError, match="--gpus-per-trial: a GPU share is only used by --executor ray"):
        make_spec(base, search="grid", space=GRID, gpus_per_trial=0.5)
    with pytest.raises(ConfigError, match="--gpus-per-trial: 1.5 is not a GPU share Ray can give"):
        make_spec(base, search="grid", space=GRID, executor="ray", gpus_per_trial=1.5)
    spec = make_spec(base, search="grid", space=GRID, executor="ray", workers=4, gpus_per_trial=0.25)
    assert spec.command_args()[-6:] == ["--executor", "ray", "--workers", "4", "--gpus-per-trial", "0.25"]
    # where trials run is not part of the study: the same space key as the local search
    assert spec.space_key() == make_spec(base, search="grid", space=GRID).space_key()
