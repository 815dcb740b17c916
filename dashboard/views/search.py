"""Search: a sweep of the run store (a grid or an Optuna search), live while it trains, and its trials.

Progress, the pick rule and the picked trial, Optuna's history, parallel coordinates, importance and
Pareto front of the study (dashboard/figures/search.py), the trials table, and for any trial: open it
on Runs, load its config into Setup, train it again with more seeds, export its student.

Cheap on every rerun (the live part reruns every REFRESH_SECONDS while the sweep trains, and a page
switch must not wait behind training): the store and sweep.json are read once per rerun, the study's
figures are built once per version of the sweep row (its `updated`, which changes after every
trial), and Optuna is imported only where a figure is built.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core import config as config_mod
from core.errors import KdlabError
from core.results.sweep import SweepFile, read_sweep_file
from core.search.spec import SearchSpec
from core.store import ACTIVE
from dashboard import figures
from dashboard.access import may_operate
from dashboard.export_panel import export_panel
from dashboard.state import job_manager, run_store
from dashboard.tables import STD, show_table

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0  # the live part polls the store this often while the sweep is active
SPENT = ("finished", "pruned", "failed")  # trial states that spent the budget

st.title("Search")
store = run_store()
manager = job_manager()


def _done(summary: dict[str, Any]) -> int:
    return sum(n for state, n in (summary.get("trials") or {}).items() if state in SPENT)


def _label(rec: Any) -> str:
    """A sweep in the picker: id, status, algorithm, trials done of the budget, best val accuracy."""
    s = rec.summary or {}
    best = s.get("best_val_acc")
    budget = s.get("budget") or rec.spec.get("trials", "?")
    return (f"{rec.id} · {rec.status} · {rec.spec.get('search', '?')} · {_done(s)}/{budget} trials"
            + (f" · best val {best:.4f}" if best is not None else ""))


@st.cache_resource(show_spinner=False, max_entries=16)
def _sweep_file(path: str, mtime_ns: int) -> SweepFile | KdlabError:
    """sweep.json validated once per version of the file (shared, read only); its error if it is unreadable."""
    try:
        return read_sweep_file(Path(path))
    except KdlabError as err:
        log.warning("%s", err)
        return err


def sweep_file(folder: Path) -> SweepFile | KdlabError | None:
    """The sweep folder's sweep.json, or None before its first trial wrote it."""
    path = folder / "sweep.json"
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return None
    return _sweep_file(str(path), mtime)


@st.cache_resource(show_spinner=False, max_entries=8)
def _study(storage: str, name: str):
    """The Optuna study (read only here). It reads the storage on every call, so one object serves every version."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=storage)


@st.cache_resource(show_spinner="Drawing the study...", max_entries=16)
def study_figures(storage: str, name: str, objectives: tuple[str, ...], picked: int | None,
                  states: tuple[tuple[int, str], ...], version: float) -> dict[str, Any] | str:
    """The study's figures, built once per `version` (the sweep row's `updated`); a message if it has none yet."""
    try:
        study = _study(storage, name)
    except KeyError:  # the sweep is queued: its study is created when it starts
        return "The study is created when the sweep starts; its charts appear after the first trial."
    val = objectives.index("val_acc")
    out = {"history": figures.search_history(study, dict(states), picked, val_index=val),
           "parallel": figures.search_parallel(study, val_index=val),
           "importance": figures.search_importance(study, val_index=val)}
    if len(objectives) == 2:
        out["pareto"] = figures.search_pareto(study, objectives, picked)
    return out


def trials_frame(file: SweepFile, spec: SearchSpec) -> pd.DataFrame:
    """One row per trial (every state), its values and scores; test accuracy beside, never used to choose."""
    fields = [d.field for d in spec.dimensions]

    def scores(r: Any) -> dict[str, Any]:
        return {"kd_val_acc": r.kd_val_acc if r else None, "kd_val_acc_std": r.kd_val_acc_std if r else None,
                "kd_test_acc_mean": r.kd_test_acc_mean if r else None,
                "kd_test_acc_std": r.kd_test_acc_std if r else None,
                "latency_ms": r.latency_ms if r else None, "params": r.student_params if r else None}

    if not file.trials:  # a sweep.json without trial summaries: its finished rows
        return pd.DataFrame([{"trial": r.trial, "state": "finished",
                              **{f: (r.model_extra or {}).get(f) for f in fields}, **scores(r),
                              "picked": i == file.best, "run": r.run_id} for i, r in enumerate(file.rows)])
    rows = {r.trial: r for r in file.rows if r.trial is not None}
    picked = file.best_trial
    return pd.DataFrame([{"trial": t.number, "state": t.state, **{f: t.params.get(f) for f in fields},
                          **scores(rows.get(t.number)), "epochs": t.epochs,
                          **({"pareto": t.pareto} if spec.multi_objective else {}),
                          "picked": t.number == picked, "run": t.run_id}
                         for t in file.trials])  # pruned and failed trials too


TABLE_CONFIG = {"kd_val_acc_std": st.column_config.NumberColumn("± std", format=STD, help="val accuracy over seeds"),
                "picked": st.column_config.CheckboxColumn("picked", help="the pick rule's choice (val scores only)"),
                "pareto": st.column_config.CheckboxColumn("Pareto", help="no trial is both more accurate and cheaper"),
                "epochs": st.column_config.NumberColumn("epochs", help="student epochs trained (all seeds)")}


def controls(rec: Any) -> None:
    """Cancel a sweep this app trains; resume one that stopped (operator only)."""
    if not may_operate():
        return
    if manager.sweep_active(rec.id):
        if st.button("Cancel sweep", key=f"search_cancel_{rec.id}"):
            manager.cancel_sweep(rec.id)
            st.toast(f"cancelling {rec.id}: finished trials are kept")
    elif rec.resumable and rec.status not in ACTIVE:
        if st.button("Resume sweep", key=f"search_resume_{rec.id}"):
            try:
                manager.resume_sweep(rec.sweep_dir)
                st.toast(f"{rec.id} queued again: finished trials are not trained again")
            except KdlabError as err:
                st.error(str(err))


def live(sweep_id: str, was_active: bool) -> None:
    """Progress, pick, charts and trials table of one sweep (a fragment rerun every few seconds while it trains)."""
    try:
        rec = store.get_sweep(sweep_id)
    except KdlabError as err:
        st.warning(str(err))
        return
    if was_active and rec.status not in ACTIVE:
        st.rerun(scope="app")  # it ended: the whole page again, the trial actions with its last trials
    spec = SearchSpec.model_validate(rec.spec)
    summary = rec.summary or {}
    counts = summary.get("trials") or {}
    done = _done(summary)
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    st.progress(min(max(rec.progress, 0.0), 1.0), text=f"{rec.status}: {done}/{spec.trials} trials"
                + (f" ({states})" if states else ""))
    if rec.error:
        st.error(rec.error)
    controls(rec)
    file = sweep_file(rec.sweep_dir)
    if isinstance(file, KdlabError):
        st.error(str(file))
        return
    if file is None:
        st.info("The sweep is training its teachers; its trials appear here as they finish." if rec.status in ACTIVE
                else f"'{rec.sweep_dir}' holds no sweep.json: no trial finished.")
        return
    pick(file, spec)
    charts(rec, spec, file)
    st.subheader("Trials")
    show_table(trials_frame(file, spec), key=f"search_trials_{sweep_id}", column_config=TABLE_CONFIG)
    for warning in file.warnings:
        st.warning(warning)


def pick(file: SweepFile, spec: SearchSpec) -> None:
    """The pick rule in words and the picked trial's val score, its test score beside."""
    st.markdown(f"**Pick rule:** {file.pick_rule or spec.pick_rule()}.")
    if file.best is None:
        st.caption("No trial is picked yet: none has finished.")
        return
    best = file.rows[file.best]
    a, b, c = st.columns(3)
    a.metric("picked trial", f"#{best.trial}" if best.trial is not None else best.point, best.point,
             delta_color="off", delta_arrow="off")
    def spread(std: float | None) -> str:  # one seed has no spread to show
        return f"± {std or 0:.4f} over {best.seeds} seeds" if best.seeds > 1 else "1 seed"

    b.metric("its KD val acc", f"{best.kd_val_acc:.4f}" if best.kd_val_acc is not None else "-",
             spread(best.kd_val_acc_std), delta_color="off", delta_arrow="off")
    c.metric("its KD test acc (reported, not used to choose)", f"{best.kd_test_acc_mean:.4f}",
             spread(best.kd_test_acc_std), delta_color="off", delta_arrow="off")


def charts(rec: Any, spec: SearchSpec, file: SweepFile) -> None:
    picked = file.best_trial
    states = tuple(sorted((t.number, t.state) for t in file.trials))
    built = study_figures(rec.storage, rec.study, tuple(spec.objectives), picked, states, rec.updated)
    if isinstance(built, str):
        st.info(built)
        return
    left, right = st.columns(2)
    left.plotly_chart(built["history"], width="stretch", key="search_history")
    if "pareto" in built:
        right.plotly_chart(built["pareto"], width="stretch", key="search_pareto")
    else:
        cost = "params" if "params" in spec.objectives else "latency_ms"
        rows = [r.to_json() for r in file.rows]
        right.plotly_chart(figures.search_scatter(rows, file.best, cost), width="stretch", key="search_scatter")
    left, right = st.columns(2)
    left.plotly_chart(built["parallel"], width="stretch", key="search_parallel")
    right.plotly_chart(built["importance"], width="stretch", key="search_importance")


def trial_actions(rec: Any) -> None:
    """For one trial of the sweep: open it, load its config into Setup, train it again with more seeds, export it."""
    listing = store.list_runs(sweep_id=rec.id)  # the light listing; only the chosen trial is read in full
    listing = listing[listing["trial"].notna()]
    if listing.empty:
        return
    st.subheader("A trial")
    ids = list(listing["id"])
    labels = {r.id: f"#{int(r.trial)} · {r.status}{' · picked' if r.id == rec.best else ''} · {r.id}"
              for r in listing.itertuples()}
    chosen = st.selectbox("Trial", ids, index=ids.index(rec.best) if rec.best in ids else 0,
                          key=f"search_trial_{rec.id}", format_func=labels.get, help="Preselected: the picked trial.")
    try:
        run = store.get_run(chosen)
    except KdlabError as err:
        st.warning(str(err))
        return
    a, b, c, d = st.columns([1, 1, 2, 2], vertical_alignment="bottom")
    if a.button("Open on Runs", key="search_open"):
        st.session_state["selected_run"] = run.id
        st.switch_page("views/runs.py")
    if may_operate() and b.button("Load into Setup", key="search_load"):
        st.session_state["loaded_config"] = copy.deepcopy(run.config)
        st.switch_page("views/setup.py")
    if not may_operate():
        return
    seeds = int((run.config.get("student") or {}).get("seeds") or 1)
    more = c.number_input("Seeds for a new run of this trial", min_value=1, max_value=20, value=min(seeds + 2, 20),
                          key=f"search_more_seeds_{run.id}", help="Teachers and students trained again in a new run "
                          "folder: the trial's score over more student seeds")
    if d.button("Train again with more seeds", key="search_retrain"):
        retrain(rec, run, int(more))
    if run.status == "done" and st.toggle("Export this trial's student", key=f"search_export_{run.id}"):
        export_panel(run)


def retrain(rec: Any, run: Any, seeds: int) -> None:
    """Queue the trial's config with `seeds` student seeds as a new run."""
    raw = copy.deepcopy(run.config)
    config_mod.set_field(raw, "student.seeds", seeds)
    try:
        new_id = manager.submit(config_mod.validate(raw), name=f"{rec.name} trial {run.trial} x{seeds} seeds",
                                source="dashboard")
    except KdlabError as err:
        st.error(str(err))
        return
    st.session_state["selected_run"] = new_id
    st.success(f"queued {new_id}: trial {run.trial} with {seeds} seeds; follow it on the Runs page")


records = store.sweeps()
if not records:
    st.info("No sweeps yet: launch a grid or a search under 'Sweep student settings' on the Setup page, or "
            "run `kdlab sweep`.")
    st.stop()
by_id = {r.id: r for r in records}
ids = list(by_id)
wanted = st.session_state.get("search_sweep")
sweep_id = st.selectbox("Sweep, newest first", ids, index=ids.index(wanted) if wanted in ids else 0,
                        format_func=lambda i: _label(by_id[i]), key="search_select")
st.session_state["search_sweep"] = sweep_id
record = by_id[sweep_id]
space = ", ".join(d.text() for d in SearchSpec.model_validate(record.spec).dimensions)
executor = record.spec.get("executor", "local")
where = {"local": "one trial at a time in this app's queue",
         "processes": f"{record.spec.get('workers')} worker processes on {record.host or 'this machine'}",
         "ray": f"Ray Tune trials, {record.spec.get('workers')} at once, on "
                f"{record.spec.get('ray_address') or 'a Ray started by ' + (record.host or 'this machine')}"
         }.get(executor, executor)
st.caption(f"{record.spec.get('search')} over {space}; objectives {', '.join(record.spec.get('objectives', []))}; "
           f"runs as {where}; folder {record.sweep_dir}; study '{record.study}' in {record.storage}")
active = record.status in ACTIVE
if active:
    st.fragment(run_every=REFRESH_SECONDS)(live)(sweep_id, True)
else:
    live(sweep_id, False)
trial_actions(record)
