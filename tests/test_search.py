"""Searches: every sampler on tiny `shapes` data, trials as store rows while they train, pruning,
a Pareto set for two objectives, a pick that never reads test, bad input, and a killed search that
resumes without training its finished trials again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from core import config
from core.cli import main
from core.errors import ConfigError, KdlabError
from core.lifecycle import RunStatus
from core.results.sweep import read_sweep_file
from core.search.engine import run_search
from core.search.rows import pick_row
from core.search.space import parse_dimension
from core.search.spec import make_spec
from core.search.study import OPTUNA_DB, storage_url
from core.store import RunStore
from core.train import EventBus

TINY = ["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2", "train.batch_size=32",
        "teachers=[{model: test_resnet}, {model: test_efficientnet}]", "student.model=test_byobnet",
        "student.width=null", "student.seeds=1", "distill.teaching=cached"]


def tiny(*extra: str) -> config.RunConfig:
    return config.load(overrides=TINY + list(extra))


def spec_of(base, search: str, *space: str, **kw):
    return make_spec(base, search=search, space=[parse_dimension(s) for s in space], **kw)


class Epochs:
    """Counts epoch events per source, and notes the store's trial rows while a student trains."""

    def __init__(self, store: RunStore | None = None, sweep_dir: Path | None = None) -> None:
        self.by_source: dict[str, int] = {}
        self.store, self.sweep_dir = store, sweep_dir
        self.seen_running: set[str] = set()

    def __call__(self, event) -> None:
        if event.kind != "epoch":
            return
        self.by_source[event.source] = self.by_source.get(event.source, 0) + 1
        if self.store is not None and event.source.startswith("student/kd"):
            sweep = self.store.find_sweep_by_dir(self.sweep_dir)
            self.seen_running |= {r.id for r in self.store.trials(sweep.id) if r.status == RunStatus.RUNNING}


@pytest.mark.parametrize("search,space,extra", [
    ("random", ["distill.temperature=1..8:log", "distill.alpha=0.2..0.9"], {}),
    ("tpe", ["distill.temperature=1..8:log", "distill.loss=hinton,dkd"], {}),
    ("nsga2", ["student.lr=0.001..0.1:log", "distill.alpha=0.3,0.7"], {"objectives": "val_acc,params"}),
    ("grid", ["distill.temperature=1,4", "distill.alpha=0.5"], {}),
])
def test_each_sampler_runs_a_small_search_with_its_trials_in_the_store(tmp_path, search, space, extra):
    base = tiny()
    spec = spec_of(base, search, *space, trials=None if search == "grid" else 3, sampler_seed=1, **extra)
    out = tmp_path / "sweep-x"
    with RunStore(tmp_path) as store:
        epochs = Epochs(store, out)
        result = run_search(base, spec, out, store=store, events=EventBus(epochs))
        sweep = store.find_sweep_by_dir(out)
        trials = store.trials(sweep.id)
        assert sweep.status == RunStatus.DONE and sweep.progress == 1.0 and sweep.spec["search"] == search
        assert len(trials) == spec.trials == len(result.rows)
        assert {t.status for t in trials} == {RunStatus.DONE}
        assert epochs.seen_running  # the trial runs were rows of the store while their students trained
        assert sweep.best == result.rows[result.best].run_id
        for row, record in zip(sorted(result.rows, key=lambda r: r.trial), trials):
            assert record.sweep_id == sweep.id and record.trial == row.trial and row.run_id == record.id
            assert record.results["students"] and record.summary["kd_test_acc"] == pytest.approx(row.kd_test_acc_mean)
            assert Path(record.run_dir, "results.json").is_file()
            for dim in spec.dimensions:  # the trial's config holds its sampled values
                section, name = dim.field.split(".")
                assert record.config[section][name] == row.value(dim.field)
            assert store.epoch_metrics(record.id).shape[0] > 0
    study = optuna.load_study(study_name=result.study, storage=storage_url(tmp_path))
    assert len(study.trials) == spec.trials
    saved = read_sweep_file(out / "sweep.json")
    assert saved.search["search"] == search and len(saved.trials) == spec.trials and saved.sweep_id == sweep.id
    if search == "grid":
        assert [r.value("distill.temperature") for r in result.rows] == [1, 4]  # grid order, as sweeps always were


def test_the_cli_lists_sweeps_and_their_trials_are_runs(tmp_path):
    store_dir = tmp_path / "store"
    runner = CliRunner()
    res = runner.invoke(main, ["sweep", "--store", str(store_dir), "--quiet", *sum((["--set", s] for s in TINY), []),
                               "--search", "random", "--trials", "2", "--space", "distill.temperature=1..6",
                               "--sampler-seed", "3"])
    assert res.exit_code == 0, res.output
    assert "pick rule: the best val accuracy" in res.output and "trials: 2 finished" in res.output
    listed = runner.invoke(main, ["sweeps", "--store", str(store_dir)])
    assert listed.exit_code == 0 and "random" in listed.output and "2 finished" in listed.output
    runs = runner.invoke(main, ["runs", "--store", str(store_dir)])
    assert runs.output.count("#0") + runs.output.count("#1") >= 2  # the trials list as runs
    assert (store_dir / OPTUNA_DB).is_file()


def test_a_proposal_of_a_finished_point_reuses_its_result_and_spends_no_budget(tmp_path):
    # TPE with sampler seed 1 proposes T=4 for its first three trials on this two-point space: the
    # repeats are told the first result, nothing trains for them, and the search ends once both
    # points finished (before its budget of 3) instead of spending trials on nothing new.
    base = tiny()
    spec = spec_of(base, "tpe", "distill.temperature=1,4", trials=3, sampler_seed=1)
    out = tmp_path / "sweep-r"
    with RunStore(tmp_path) as store:
        epochs = Epochs()
        result = run_search(base, spec, out, store=store, events=EventBus(epochs))
        runs = store.trials(store.find_sweep_by_dir(out).id)
    repeats = [t for t in result.trials if t.state == "repeat"]
    finished = {t.number: t for t in result.trials if t.state == "finished"}
    assert repeats, [(t.params, t.state) for t in result.trials]
    assert len(finished) == len(runs) == len(result.rows) == 2  # each point trained once, one run row each
    assert sorted(r.value("distill.temperature") for r in result.rows) == [1, 4]
    first = {tuple(t.params.items()): t for t in sorted(finished.values(), key=lambda t: -t.number)}
    for t in repeats:
        assert t.run_id is None and t.epochs == 0 and t.values == first[tuple(t.params.items())].values
    assert epochs.by_source.get("student/kd-r1/s0", 0) == 2 * 2  # two points of 2 epochs (train.epochs), not more
    assert "every point of the space has finished; the search ends before its budget" in result.warnings
    assert read_sweep_file(out / "sweep.json").search["trials"] == 3


def test_pruned_trials_stop_early_and_are_marked_pruned(tmp_path):
    # Four epochs per student; learning rates from hopeless (1e-5) to good: the pruner stops the slow ones.
    base = tiny("student.epochs=4")
    spec = spec_of(base, "random", "student.lr=0.00001..0.3:log", trials=6, prune="median", sampler_seed=0)
    out = tmp_path / "sweep-p"
    with RunStore(tmp_path) as store:
        epochs = Epochs()
        result = run_search(base, spec, out, store=store, events=EventBus(epochs))
        trials = {r.trial: r for r in store.trials(store.find_sweep_by_dir(out).id)}
    pruned = [t for t in result.trials if t.state == "pruned"]
    finished = [t for t in result.trials if t.state == "finished"]
    assert pruned, [(t.params, t.state) for t in result.trials]
    for t in pruned:
        assert trials[t.number].status == RunStatus.PRUNED  # not mixed with finished ones
        assert t.epochs < 4 and t.values is None  # stopped before its last epoch, no scratch twin trained
        assert t.number not in {r.trial for r in result.rows}
    assert all(t.epochs >= 4 for t in finished)
    assert len(pruned) + len(finished) == 6


def test_two_objectives_give_a_non_dominated_set_and_a_stated_pick(tmp_path):
    base = tiny()
    spec = spec_of(base, "nsga2", "student.model=test_byobnet,test_efficientnet", "distill.temperature=1,4", trials=4,
                   objectives="val_acc,params", sampler_seed=2)
    with RunStore(tmp_path) as store:
        result = run_search(base, spec, tmp_path / "sweep-mo", store=store)
    done = [t for t in result.trials if t.state == "finished"]
    front = [t for t in done if t.pareto]
    assert front

    def dominates(a, b) -> bool:
        ge = a.values["val_acc"] >= b.values["val_acc"] and a.values["params"] <= b.values["params"]
        return ge and (a.values["val_acc"] > b.values["val_acc"] or a.values["params"] < b.values["params"])

    for t in front:
        assert not any(dominates(o, t) for o in done)
    for t in done:
        if not t.pareto:
            assert any(dominates(o, t) for o in front)
    assert "smallest trial (params) within 0.002 val accuracy" in result.pick_rule
    picked = result.rows[result.best]
    top = max(r.kd_val_acc for r in result.rows)
    assert picked.kd_val_acc >= top - 0.002 - 1e-9
    assert picked.student_params == min(r.student_params for r in result.rows if r.kd_val_acc >= top - 0.002 - 1e-9)


def test_the_pick_never_reads_test(sweep_row):
    spec = make_spec(tiny(), search="random", space=[parse_dimension("distill.alpha=0.1..0.9")], trials=2)
    rows = [sweep_row(0.90, test_acc=0.99), sweep_row(0.95, test_acc=0.10)]
    assert pick_row(rows, spec) == 1  # the better val wins, whatever its test says
    rows[1] = rows[1].model_copy(update={"kd_test_acc_mean": 0.999})
    assert pick_row(rows, spec) == 1
    two = make_spec(tiny(), search="tpe", space=[parse_dimension("distill.alpha=0.1..0.9")], trials=2,
                    objectives="val_acc,latency_ms")
    fast = [r.model_copy(update={"latency_ms": ms}) for r, ms in zip([sweep_row(0.950, test_acc=0.2),
                                                                     sweep_row(0.951, test_acc=0.9)], [1.0, 5.0])]
    assert pick_row(fast, two) == 0  # within 0.002 of the best val: the faster one ships


@pytest.mark.parametrize("args,field", [
    (["--space", "distill.temprature=1..4", "--trials", "2"], "distill.temprature"),
    (["--space", "distill.alpha=0..2", "--trials", "2"], "distill.alpha"),
    (["--space", "distill.temperature=4..1", "--trials", "2"], "distill.temperature"),
    (["--space", "distill.temperature=0..4:log", "--trials", "2"], "distill.temperature"),
    (["--trials", "2"], "--space"),
    (["--space", "distill.temperature=1..4", "--trials", "0"], "--trials"),
    (["--space", "distill.temperature=1..4", "--trials", "2", "--objective", "val_acc,speed"], "--objective"),
    (["--space", "distill.temperature=1..4", "--trials", "2", "--objective", "val_acc,latency_ms", "--prune",
      "median"], "--prune"),
    (["--grid", "distill.alpha=0.5", "--space", "distill.temperature=1..4"], "--grid"),
])
def test_bad_search_input_is_one_line_exit_2_and_stores_nothing(tmp_path, args, field):
    store_dir = tmp_path / "store"
    res = CliRunner().invoke(main, ["sweep", "--store", str(store_dir), *sum((["--set", s] for s in TINY), []),
                                    *args])
    assert res.exit_code == 2, res.output
    message = res.output.strip().splitlines()[-1]
    assert message.startswith("error: ") and field in message
    assert not (store_dir / OPTUNA_DB).exists()
    if (store_dir / "kdlab.db").exists():
        with RunStore(store_dir) as store:
            assert store.sweeps() == [] and store.run_ids() == []
    assert not any(p.name.startswith("sweep-") for p in store_dir.glob("*")) if store_dir.exists() else True


def test_a_study_name_taken_by_another_space_is_refused_and_nothing_is_lost(tmp_path):
    base = tiny()
    with RunStore(tmp_path) as store:
        first = run_search(base, spec_of(base, "random", "distill.alpha=0.2..0.8", trials=1, study="mine"),
                           tmp_path / "sweep-a", store=store)
        with pytest.raises(ConfigError, match="exists with another space") as err:
            run_search(base, spec_of(base, "random", "distill.temperature=1..4", trials=1, study="mine"),
                       tmp_path / "sweep-b", store=store)
        assert err.value.field == "--study"
        assert [s.id for s in store.sweeps()] == ["sweep-a"] and len(store.trials("sweep-a")) == 1
    assert not (tmp_path / "sweep-b").exists()
    assert len(first.rows) == 1


def _epoch_events(store: RunStore, run_id: str) -> int:
    return len(store.events(run_id, kinds=["epoch"]))


def test_a_killed_search_resumes_without_training_its_finished_trials_again(tmp_path):
    store_dir, out = tmp_path / "store", tmp_path / "store" / "sweep-k"
    # Three trials of 6 student epochs; killed (SIGKILL) while the second trial trains.
    cmd = [sys.executable, "-m", "core.cli", "sweep", "--store", str(store_dir), "--out", str(out), "--quiet",
           *sum((["--set", s] for s in TINY + ["student.epochs=6"]), []), "--search", "random", "--trials", "3",
           "--space", "distill.temperature=1..6", "--sampler-seed", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if (store_dir / "kdlab.db").exists():
                with RunStore(store_dir, reap=False) as store:
                    sweep = store.find_sweep_by_dir(out)
                    trials = store.trials(sweep.id) if sweep else []
                    if len(trials) >= 2 and trials[0].status == RunStatus.DONE and \
                            _epoch_events(store, trials[1].id) >= 2:
                        break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.3)
        else:
            pytest.fail("the search did not reach its second trial in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunStore(store_dir) as store:  # opening it reaps the dead owner's rows
        sweep = store.find_sweep_by_dir(out)
        first, second = store.trials(sweep.id)[:2]
        assert sweep.status == RunStatus.INTERRUPTED and second.status == RunStatus.INTERRUPTED
        before = {r.id: _epoch_events(store, r.id) for r in (first, second)}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    with RunStore(store_dir) as store:
        sweep = store.find_sweep_by_dir(out)
        trials = store.trials(sweep.id)
        assert sweep.status == RunStatus.DONE and [t.status for t in trials] == [RunStatus.DONE] * 3
        assert _epoch_events(store, first.id) == before[first.id]  # finished: not one epoch trained again
        resumed = _epoch_events(store, second.id) - before[second.id]
        # The stopped trial continued from its distilled student's checkpoint (its scratch twin is the
        # first trial's): 6 epochs in all, or 5 recorded when the kill fell between a checkpoint and its event.
        assert 5 <= before[second.id] + resumed <= 6 and resumed <= 4
        assert [t.id for t in trials[:2]] == [first.id, second.id]  # the retried trial kept its run row
    saved = json.loads((out / "sweep.json").read_text())
    assert len(saved["rows"]) == 3 and sorted(t["state"] for t in saved["trials"]) == ["finished"] * 3 + ["interrupted"]


def test_grid_through_the_old_entry_point_still_refuses_more_trials_than_points():
    with pytest.raises(KdlabError, match="more than the grid"):
        make_spec(tiny(), search="grid", space=[parse_dimension("distill.alpha=0.2,0.5")], trials=3)


def test_a_sweep_folder_from_before_searches_still_opens(tmp_path):
    """sweep.json as sweeps wrote it before they were store rows (no trials, no search) reads as it did."""
    from core.sweep import load_sweep
    row = {"distill.temperature": 2, "point": "distill.temperature=2", "kd_val_acc": 0.97, "kd_val_nll": 0.1,
           "kd_test_acc_mean": 0.96, "kd_test_acc_std": 0.01, "kd_test_nll_mean": 0.12,
           "scratch_test_acc_mean": 0.95, "scratch_test_acc_std": 0.01, "paired_gain_mean": 0.01,
           "paired_gain_std": 0.005, "ensemble_test_acc": 0.98, "gain_recovery": 0.33,
           "gain_recovery_per_seed_mean": 0.3, "gain_recovery_per_seed_std": 0.1, "seeds": 2,
           "kd_train_seconds": 3.0}
    (tmp_path / "sweep.json").write_text(json.dumps({"axes": ["distill.temperature"], "best": 0, "rows": [row],
                                                     "warnings": []}))
    (tmp_path / "config.yaml").write_text(tiny().to_yaml())
    sweep = load_sweep(tmp_path)
    assert sweep.rows[0].value("distill.temperature") == 2 and sweep.file.trials == [] and sweep.file.search is None
    assert sweep.rows[0].trial is None and sweep.point_config(0)["distill"]["temperature"] == 2


def test_a_pruned_trial_ends_pruned_and_is_not_resumable():
    from core.lifecycle import NotResumable, Pruned, check_resumable, final_status
    assert final_status(Pruned(), shutting_down=False) == (RunStatus.PRUNED, None)
    assert RunStatus.PRUNED in RunStatus.FINISHED and RunStatus.PRUNED not in RunStatus.RESUMABLE
    with pytest.raises(NotResumable, match="pruned"):
        check_resumable("r1", RunStatus.PRUNED)
