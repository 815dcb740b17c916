"""A damaged or lost run store: clear errors, health, moving the file aside, reopening, reindexing run folders.

Also: a resumed run's progress never drops (read through the store).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from core import config
from core.cli import main
from core.errors import Cancelled
from core.pipeline import prepare, run_experiment
from core.results import headline
from core.store import (SCHEMA_VERSION, NothingToRecover, RunStatus, RunStore, StoreDamaged, StoreError, expected_trainings,
                        record_run, recover_store, store_problem)
from core.train import CancelToken, EventBus

# The tiny shapes config of tests/test_pipeline.py (TINY): 2 teachers, 2 student seeds, 2 epochs.
TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]",
        "student.model=test_byobnet", "student.width=null", "student.seeds=2"]
CONFIG = {"name": "tiny", "teachers": [{"model": "test_resnet"}]}
TRAINED = ("teacher/", "student/")


def _filled_store(folder: Path, runs: int = 3) -> list[str]:
    """A closed store with a few runs and events (checkpointed into kdlab.db); returns their ids."""
    with RunStore(folder) as store:
        ids = []
        for i in range(runs):
            run_id = store.create_run({**CONFIG, "name": f"r{i}"}, status="running", source="cli")
            store.append_events(run_id, [{"kind": "info", "source": "x", "message": "m" * 400}] * 20)
            store.finish_run(run_id, "done")
            ids.append(run_id)
    return ids


def _one_line_naming_recover(message: str, folder: Path) -> None:
    assert "\n" not in message
    assert str(folder / "kdlab.db") in message and f"kdlab store recover --store '{folder}'" in message


def _moved_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if re.fullmatch(r"kdlab\.db\.damaged-\d{8}-\d{6}(-\d+)?", p.name))


def _damage(folder: Path, case: str) -> bytes:
    db = folder / "kdlab.db"
    if case == "truncated":
        _filled_store(folder)
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 2])
    elif case == "garbage":
        db.write_bytes(b"this is not an sqlite file at all " * 200)
    else:  # an SQLite database of something else entirely
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("CREATE TABLE users (name TEXT)")
            conn.execute("INSERT INTO users VALUES ('ada')")
        conn.close()
    return db.read_bytes()


@pytest.mark.parametrize("case", ["truncated", "garbage", "foreign"])
def test_a_damaged_file_is_one_clear_error_until_it_is_moved_aside(tmp_path, case):
    damaged = _damage(tmp_path, case)
    with pytest.raises(StoreDamaged) as err:
        RunStore(tmp_path)
    _one_line_naming_recover(str(err.value), tmp_path)
    problem = store_problem(tmp_path)  # the same line, without raising
    assert problem == str(err.value)

    moved = recover_store(tmp_path)
    assert _moved_files(tmp_path) == [moved] and moved.read_bytes() == damaged  # kept byte for byte
    if case == "foreign":  # still the other program's database, untouched
        assert sqlite3.connect(moved).execute("SELECT name FROM users").fetchall() == [("ada",)]
    assert f"was damaged and moved aside to '{moved.name}'" in store_problem(tmp_path)  # reindex, it says
    with RunStore(tmp_path) as fresh:
        assert fresh.run_ids() == [] and fresh.schema_version() == SCHEMA_VERSION
        fresh.reindex()
    assert store_problem(tmp_path) is None
    with pytest.raises(NothingToRecover, match="not damaged: nothing to move aside"):
        recover_store(tmp_path)  # a healthy store is never moved aside
    assert _moved_files(tmp_path) == [moved]


def test_an_empty_file_starts_a_new_store_and_says_so_once(tmp_path, caplog):
    (tmp_path / "kdlab.db").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="core.store"):
        store = RunStore(tmp_path)
        assert store.run_ids() == []
        store.run_ids()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "kdlab.db was empty (0 bytes): a new store was started" in warnings[0]
    notice = store.health()
    assert notice == warnings[0] and f"`kdlab runs reindex --store '{tmp_path}'`" in notice
    store.close()
    assert store_problem(tmp_path) == notice  # said by any store of this process on that file...
    with RunStore(tmp_path) as again:
        assert again.reindex().added == [] and again.health() is None  # ...until it has been done
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


@pytest.mark.parametrize("how", ["moved", "moved_with_side_files", "deleted"])
def test_a_file_moved_away_under_an_open_store_is_reopened_fresh(tmp_path, how):
    store = RunStore(tmp_path)
    old = store.create_run(CONFIG, status="running", source="cli")
    store.append_events(old, [{"kind": "info", "source": "x", "message": "before"}])
    # A second thread with its own cached connection, alive throughout.
    ask, answer = threading.Event(), []
    ready, stop = threading.Event(), threading.Event()

    def other_thread() -> None:
        store.run_ids()
        ready.set()
        while not stop.is_set():
            if ask.wait(0.05):
                ask.clear()
                try:
                    answer.append(store.run_ids())
                except StoreError as err:
                    answer.append(str(err))
    worker = threading.Thread(target=other_thread)
    worker.start()
    ready.wait(10)
    db = tmp_path / "kdlab.db"
    aside = tmp_path / "elsewhere.db"
    if how == "deleted":
        db.unlink()
    else:
        db.rename(aside)
        if how == "moved_with_side_files":
            for suffix in ("-wal", "-shm"):
                if Path(f"{db}{suffix}").exists():
                    Path(f"{db}{suffix}").rename(f"{aside}{suffix}")
    try:
        assert store.run_ids() == []  # a fresh store, not "no such table: runs"
        new = store.create_run(CONFIG, status="running", source="cli")
        ask.set()
        for _ in range(200):
            if answer:
                break
            stop.wait(0.05)
        assert answer == [[new]]  # the other thread reconnected to the same fresh file
        assert "was moved or deleted while kdlab had it open" in store.health()
    finally:
        stop.set()
        worker.join(10)
        store.close()
    assert db.is_file() and RunStore(db.parent).run_ids() == [new]
    if how != "deleted":  # the moved file kept everything, its write-ahead log folded in
        conn = sqlite3.connect(aside)
        assert conn.execute("SELECT id FROM runs").fetchall() == [(old,)]
        assert conn.execute("SELECT message FROM events").fetchall() == [("before",)]
        conn.close()


def test_another_store_of_the_process_opening_after_a_move_shares_nothing_with_the_old_file(tmp_path):
    held = RunStore(tmp_path)
    old = held.create_run(CONFIG, status="running", source="cli")  # in the write-ahead log for now
    db = tmp_path / "kdlab.db"
    db.rename(tmp_path / "aside.db")  # its -wal and -shm stay behind, under the old names
    problem = store_problem(tmp_path)  # a second store: opens a new file where the old one was
    assert problem is not None and "was moved or deleted while kdlab had it open" in problem
    assert held.run_ids() == [] and held.health() == problem  # the first store follows it there
    new = held.create_run(CONFIG, status="queued")
    held.close()
    for path, ids in ((db, [new]), (tmp_path / "aside.db", [old])):
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert [r[0] for r in conn.execute("SELECT id FROM runs")] == ids
        conn.close()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if ".orphaned-" in p.name)
    assert [name[-4:] for name in leftovers] == ["-shm", "-wal"]  # renamed aside, not deleted


def test_a_file_replaced_by_garbage_under_an_open_store_recovers_in_the_same_process(tmp_path):
    store = RunStore(tmp_path)
    store.create_run(CONFIG, status="running", source="cli")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"garbage " * 1000)
    os.replace(garbage, tmp_path / "kdlab.db")
    for _ in range(2):  # each call says the same, none hangs on to the old file
        with pytest.raises(StoreDamaged) as err:
            store.list_runs()
        _one_line_naming_recover(str(err.value), tmp_path)
    assert "kdlab store recover" in store.health()
    moved = recover_store(tmp_path)
    assert moved.read_bytes() == b"garbage " * 1000
    assert store.run_ids() == []  # the long-lived store works on the fresh file, and says what to do next
    assert f"was damaged and moved aside to '{moved.name}'" in store.health()
    store.create_run(CONFIG, status="queued")
    store.close()


def test_move_aside_of_an_open_store_renames_its_side_files_too(tmp_path):
    ids = _filled_store(tmp_path)
    store = RunStore(tmp_path)
    store.run_ids()  # WAL mode: -wal and -shm exist now
    assert Path(f"{store.db_path}-wal").exists()
    moved = store.move_aside()
    assert moved.parent == tmp_path and store.run_ids() == []
    assert sorted(r[0] for r in sqlite3.connect(moved).execute("SELECT id FROM runs")) == sorted(ids)
    store.close()


# -- real run folders -------------------------------------------------------------------------------

def _cancel_after(trainings: int, cancel: CancelToken):
    done = []

    def watch(event) -> None:
        if event.kind == "done" and event.source.startswith(TRAINED):
            done.append(event.source)
            if len(done) == trainings:
                cancel.cancel()
    return watch


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory) -> Path:
    """Two real tiny runs: `finished`, and `killed` (stopped mid-way, its results.json still says running)."""
    root = tmp_path_factory.mktemp("folders")
    cfg = config.load(overrides=TINY)
    run_experiment(prepare(cfg, root / "finished"), root / "finished")
    cancel = CancelToken()
    with pytest.raises(Cancelled):
        run_experiment(prepare(cfg, root / "killed"), root / "killed", EventBus(_cancel_after(3, cancel)), cancel)
    results = json.loads((root / "killed" / "results.json").read_text())
    results["status"] = "running"  # what a killed process leaves behind
    (root / "killed" / "results.json").write_text(json.dumps(results))
    return root


def _copy_runs(run_folders: Path, data_dir: Path) -> Path:
    data_dir.mkdir(exist_ok=True)
    for name in ("finished", "killed"):
        shutil.copytree(run_folders / name, data_dir / name)
    return data_dir


def _digest(folder: Path) -> dict[str, str]:
    """A hash of every file under `folder`, the store's own files aside."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith("kdlab.db")}


def test_reindex_brings_back_run_folders_and_a_second_one_adds_nothing(run_folders, tmp_path):
    data = _copy_runs(run_folders, tmp_path / "store")
    with (data / "finished" / "events.jsonl").open("a") as f:
        f.write('{"kind": "step", "time": 1\n')  # a torn last line
    sweep = data / "sweep-20250101-000000-x-0000"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    shutil.copy(run_folders / "finished" / "config.yaml", sweep / "config.yaml")
    bad = data / "bad-config"
    bad.mkdir()
    (bad / "config.yaml").write_text("name: x\ndistill:\n  alpha: 3\n")
    (bad / "events.jsonl").write_text("")
    (data / "notes").mkdir()
    before = _digest(data)

    store = RunStore(data)
    report = store.reindex()
    assert sorted(report.added) == ["finished", "killed"] and report.known == 0
    assert [(r.folder, r.reason) for r in report.skipped] == [("bad-config", report.skipped[0].reason)]
    assert "invalid config.yaml" in report.skipped[0].reason and "distill.alpha" in report.skipped[0].reason

    done, killed = store.get_run("finished"), store.get_run("killed")
    assert (done.status, done.progress, done.source, done.run_dir) == ("done", 1.0, "cli", data / "finished")
    results = json.loads((data / "finished" / "results.json").read_text())
    assert done.results == results and done.summary == headline(results, done.config)
    assert done.summary["kd_test_acc"] > 0 and done.name == config.load(overrides=TINY).name
    assert done.config == config.load(overrides=TINY).to_dict()
    lines = (data / "finished" / "events.jsonl").read_text().splitlines()
    events = store.events("finished")
    assert len(events) == len(lines) - 1 + 1  # the torn line skipped, a note of the reindex added
    assert "1 bad line(s)" in next(r.reason for r in report.rows if r.folder == "finished")
    first, last = json.loads(lines[0]), json.loads(lines[-2])
    assert (done.created, done.started, done.finished) == (first["time"], first["time"], last["time"])
    assert events[-1]["source"] == "store" and "results.json says done" in events[-1]["message"]
    assert store.epoch_metrics("finished")["source"].str.startswith("teacher/").any()

    assert killed.status == RunStatus.INTERRUPTED and killed.resumable  # no process owns it now
    assert 0 < killed.progress < 1 and killed.pid is None
    assert "results.json says running" in store.events("killed")[-1]["message"]

    again = store.reindex()
    assert again.added == [] and again.known == 2 and [r.folder for r in again.skipped] == ["bad-config"]
    assert len(store.run_ids()) == 2 and len(store.events("finished")) == len(events)
    assert _digest(data) == before  # reindexing only reads the folders
    store.close()


def test_kdlab_store_recover_end_to_end(run_folders, tmp_path):
    data = _copy_runs(run_folders, tmp_path / "store")
    garbage = b"\x00\x01 definitely not sqlite " * 300
    (data / "kdlab.db").write_bytes(garbage)
    folders_before = {name: _digest(data / name) for name in ("finished", "killed")}
    runner = CliRunner()

    listed = runner.invoke(main, ["runs", "--store", str(data)])
    assert listed.exit_code == 2 and listed.stdout == ""
    assert listed.stderr.startswith("error: store: ") and listed.stderr.count("\n") == 1
    _one_line_naming_recover(listed.stderr.strip(), data)

    recovered = runner.invoke(main, ["store", "recover", "--store", str(data)])
    assert recovered.exit_code == 0, recovered.output
    (moved,) = _moved_files(data)
    assert moved.read_bytes() == garbage
    assert f"moved the damaged store aside to {moved}" in recovered.stdout
    rows = {line.split()[0]: line.split() for line in recovered.stdout.splitlines()[2:] if line.split()}
    assert rows["finished"][1:4] == ["added", "done", str(len(RunStore(data).events("finished")) - 1)]
    assert rows["killed"][1:3] == ["added", "interrupted"]
    assert "2 run(s) added, 0 skipped, 0 already in the store" in recovered.stdout

    listed = runner.invoke(main, ["runs", "--store", str(data)])
    assert listed.exit_code == 0, listed.output
    assert {line.split()[0] for line in listed.stdout.splitlines()[2:]} == {"finished", "killed"}

    again = runner.invoke(main, ["store", "recover", "--store", str(data)])
    assert again.exit_code == 0 and "is not damaged: nothing to move aside" in again.stdout
    assert "0 run(s) added, 0 skipped, 2 already in the store" in again.stdout
    reindexed = runner.invoke(main, ["runs", "reindex", "--store", str(data)])
    assert reindexed.exit_code == 0 and reindexed.stdout.strip().endswith(f"2 already in the store ({data})")
    assert runner.invoke(main, ["runs", "--store", str(data), "reindex"]).exit_code == 0  # the group's --store
    assert _moved_files(data) == [moved]  # nothing deleted, nothing moved twice
    assert {name: _digest(data / name) for name in ("finished", "killed")} == folders_before


# -- progress of a resumed run ---------------------------------------------------------------------

def test_a_resumed_runs_progress_never_goes_below_what_it_had(tmp_path):
    cfg = config.load(overrides=TINY)
    store = RunStore(tmp_path)
    run_id = store.create_run(cfg, status="running", source="cli")
    out = store.run_dir_for(run_id)
    seen: list[float] = []

    def attempt(cancel: CancelToken, *watchers) -> None:
        with record_run(store, run_id, out, expected_trainings(cfg)) as recorder:
            # After the recorder: each value is what the store holds once the recorder has written.
            bus = EventBus(recorder, lambda e: seen.append(store.get_run(run_id).progress), *watchers)
            run_experiment(prepare(cfg, out), out, bus, cancel)

    cancel = CancelToken()
    with pytest.raises(Cancelled):
        attempt(cancel, _cancel_after(3, cancel))  # both teachers and the first scratch student
    stopped = store.get_run(run_id)
    assert stopped.status == "cancelled" and stopped.progress >= 3 / expected_trainings(cfg)
    store.requeue(run_id)
    store.start_run(run_id)
    resumed_at = len(seen)
    attempt(CancelToken())
    assert store.get_run(run_id).status == "done" and store.get_run(run_id).progress == 1.0
    assert min(seen[resumed_at:]) >= stopped.progress
    assert seen == sorted(seen), seen
    store.close()
