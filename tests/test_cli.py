"""The headless CLI: a smoke run writes config, events and results; bad input exits 2 in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from core.cli import main
from core.store import RunStore, StoreError

# A run small enough for seconds on 2 cores: tiny shapes data, two tiny teachers, one epoch each.
QUICK = ["--preset", "digits-demo", "--set", "data.name=shapes", "--set", "data.count=200",
         "--set", "data.image_size=16", "--set", "train.epochs=1", "--set", "train.batch_size=32",
         "--set", "teachers=[{model: resnet10t, width: 0.25}, {model: test_resnet}]",
         "--set", "student.model=test_byobnet", "--set", "student.width=null", "--set", "student.seeds=1",
         "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_smoke_run_writes_config_events_and_results(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", *QUICK, "--out", str(out))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["name"] == "shapes"
    assert results["device"] == "cpu"
    assert [t["model"] for t in results["teachers"]] == ["resnet10t", "test_resnet"]
    for teacher in results["teachers"]:
        assert {"name", "model", "params", "flops", "test_acc", "test_nll", "train_seconds"} <= set(teacher)
        assert teacher["params"] > 0 and teacher["flops"] > 0 and 0.0 <= teacher["test_acc"] <= 1.0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert {"start", "epoch", "done"} <= {e["kind"] for e in events}
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["name"] == "shapes" and saved["train"]["epochs"] == 1
    assert "test_resnet" in result.output  # the summary table
    # The run's own log file takes INFO; the terminal shows warnings and errors only (no --verbose).
    assert not [line for line in result.stderr.splitlines() if line.startswith(("info", "debug"))], result.stderr

    # The saved config reproduces the run; the teachers are resumed, not retrained.
    again = invoke("run", str(out / "config.yaml"), "--out", str(out), "--quiet")
    assert again.exit_code == 0, again.output
    rerun = json.loads((out / "results.json").read_text())
    assert [t["test_acc"] for t in rerun["teachers"]] == [t["test_acc"] for t in results["teachers"]]


def _write_weights(path: Path, garbage: bool) -> None:
    path.write_bytes(b"\x00not a weights file" * 10 if garbage else b"")


def _imagefolder(root: Path, empty: bool) -> Path:
    root.mkdir()
    if not empty:
        for name in ("a", "b"):
            (root / name).mkdir()
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "a" / "x.png")
        (root / "b" / "y.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("case", ["model", "dataset", "temperature", "alpha", "batch", "empty_folder",
                                  "bad_image", "weights", "out"])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    out = tmp_path / "out"
    args = list(QUICK)
    if case == "model":
        args += ["--set", "teachers.0.model=resnet_nope"]
        field = "teachers.0.model"
    elif case == "dataset":
        args += ["--set", "data.name=nodata"]
        field = "data.name"
    elif case == "temperature":
        args += ["--set", "distill.temperature=0"]
        field = "distill.temperature"
    elif case == "alpha":
        args += ["--set", "distill.alpha=1.2"]
        field = "distill.alpha"
    elif case == "batch":
        args += ["--set", "train.batch_size=5000"]
        field = "train.batch_size"
    elif case in ("empty_folder", "bad_image"):
        root = _imagefolder(tmp_path / "imgs", empty=case == "empty_folder")
        args += ["--set", "data.name=imagefolder", "--set", f"data.root={root}"]
        field = "data.root"
    elif case == "weights":
        weights = tmp_path / "w.safetensors"
        _write_weights(weights, garbage=True)
        args += ["--set", f"teachers.0.weights_file={weights}"]
        field = "weights_file"
    else:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "sub"
        field = "--out"
    result = CliRunner().invoke(main, ["run", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert field in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_existing_run_with_another_config_is_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("name: other\n")
    result = CliRunner().invoke(main, ["run", *QUICK, "--out", str(out)])
    assert result.exit_code == 2 and "different config" in result.output
    assert (out / "config.yaml").read_text() == "name: other\n"


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "core.cli", "run", "--preset", "digits-demo",
                           "--set", "distill.alpha=2", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: distill.alpha")
    assert "Traceback" not in proc.stderr


def test_models_lists_names_with_params():
    result = invoke("models", "--filter", "resnet1*", "--limit", "5")
    assert result.exit_code == 0
    rows = result.output.strip().splitlines()
    assert 0 < len(rows) <= 5 and all(r.startswith("resnet1") and r.endswith("M") for r in rows)


def test_presets_and_show_config():
    header, rule, *rows = invoke("presets").output.splitlines()
    assert header.split() == ["preset", "data", "teachers"] and set(rule) == {"-"}
    assert rows[0].startswith("digits-demo ")
    # Every name stands apart from its data set, however long the name (was 'class-bias-variancedigits').
    data_at = header.index("data")
    assert all(row[data_at - 2:data_at] == "  " and row[:data_at].strip() for row in rows)
    shown = yaml.safe_load(invoke("show-config", "--set", "train.epochs=2").output)
    assert shown["train"]["epochs"] == 2


def test_errors_from_any_command_exit_2_in_one_line_on_stderr(tmp_path):
    for args, expected in [
        (["resume", "nope", "--store", str(tmp_path)], "error: run: no run 'nope' in the store"),
        (["show-config", "--set", "train.epochs=0"], "error: train.epochs"),
        (["run", "--preset", "digits-demo", "--no-store"], "error: --out: --no-store needs an output folder"),
    ]:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and result.stderr.splitlines() == [result.stderr.strip()]
        assert result.stderr.startswith(expected) and "Traceback" not in result.output


def test_sweep_checks_its_grid_before_announcing_it(tmp_path):
    result = CliRunner().invoke(main, ["sweep", "--preset", "digits-demo", "--grid", "distill.alpha=0.5,2",
                                       "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert result.output.splitlines() == [result.output.strip()] and result.output.startswith("error: distill.alpha")
    assert "kdlab sweep:" not in result.output and not (tmp_path / "s").exists()


def test_verbose_logs_the_engine_on_stderr(tmp_path):
    quiet = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "a")])
    assert quiet.exit_code == 0 and "debug" not in quiet.stderr
    verbose = CliRunner().invoke(main, ["-v", "runs", "--store", str(tmp_path / "b")])
    assert verbose.exit_code == 0, verbose.output
    assert f"debug core.store.schema: created the run store '{tmp_path / 'b' / 'kdlab.db'}'" in verbose.stderr
    assert verbose.stdout == ""  # logs never mix into the tables
    again = CliRunner().invoke(main, ["runs", "--store", str(tmp_path / "b")])  # the level goes back
    assert "debug" not in again.stderr


# -- the run store's folder is --store, never --out ------------------------------------------------

def _store_errors(store_dir: Path) -> None:
    with pytest.raises(StoreError) as err:
        RunStore(store_dir)
    assert err.value.field == "--store", err.value
    runner = CliRunner()
    for args in (["runs"], ["runs", "reindex"], ["store", "recover"], ["run", *QUICK],
                 ["sweep", *QUICK, "--grid", "distill.temperature=1,2"], ["resume", "some-run"]):
        result = runner.invoke(main, [*args, "--store", str(store_dir)])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: --store: "), (args, result.stderr)
        assert "--out" not in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)


def test_a_store_folder_that_cannot_be_created_is_named_store(tmp_path):
    _store_errors(Path("/proc/kdlab-store"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _store_errors(blocker / "sub")
    assert blocker.read_text() == "x"


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only bind mount of a folder holding a store (needs root; skipped where mount is refused)."""
    source, mount = tmp_path / "src", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    RunStore(source / "store").close()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "--bind", str(source), str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"no bind mount here: {done.stderr.decode().strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode:
            pytest.skip("cannot remount read-only here")
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=True)  # still busy: detach it anyway


def test_a_store_on_a_read_only_mount_is_named_store(read_only_folder):
    _store_errors(read_only_folder / "store")
    _store_errors(read_only_folder / "new-store")
