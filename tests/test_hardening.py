"""What a hostile-but-fair new user broke: each case reproduced as it was found, then fixed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.results import read_results

ROOT = Path(__file__).resolve().parent.parent
# Long enough to be interrupted mid-training: teachers of 8 epochs on tiny shapes data.
SLOW = ["--preset", "digits-demo", "--set", "data.name=shapes", "--set", "data.count=200",
        "--set", "data.image_size=16", "--set", "train.epochs=8", "--set", "train.batch_size=16",
        "--set", "teachers=[{model: test_resnet}, {model: test_resnet, label: second}]",
        "--set", "student.model=test_byobnet", "--set", "student.width=null", "--set", "student.seeds=1"]


def kdlab(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "core.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


def test_ctrl_c_records_the_cancel_in_events_and_results(tmp_path):
    out, store = tmp_path / "run", tmp_path / "store"
    proc = kdlab("run", *SLOW, "--out", str(out), "--store", str(store), "--quiet")
    events = out / "events.jsonl"
    # Interrupt once the first teacher has finished an epoch: the run is mid-training.
    wait_for(lambda: events.is_file() and '"kind": "epoch"' in events.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    kinds = [(e["kind"], e["source"]) for e in map(json.loads, events.read_text().splitlines())]
    assert ("cancelled", "run") in kinds and any(k == "cancelled" and s.startswith("teacher/") for k, s in kinds)
    results = read_results(out / "results.json")
    assert results.status == "cancelled" and results.comparison == []
    assert "cancelled" in err and "resume" in err
    from core.store import RunStore
    [run_id] = RunStore(store).run_ids()
    assert RunStore(store).get_run(run_id).status == "cancelled"
