"""Cached reads of the engine for pages (keyed by JSON strings or plain values so Streamlit can hash them).

torch, timm and the data loaders are imported inside the functions that need them (the Setup page):
the Runs, Trade-off, Compare and Learn pages import this module without paying for them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import pandas as pd
import streamlit as st

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from core.config import DataConfig
    from core.store import RunStore

log = logging.getLogger(__name__)

LIVE_TTL = 1.0  # seconds a cached listing may lag the store: live pages poll every 2 s
TeacherSpec = tuple[str, str, int, "float | None", "float | None"]  # display, model, seeds, width, depth


@st.cache_data(show_spinner="Loading data set...")
def data_preview(data_json: str, _data: DataConfig, per_class: int = 2) -> dict:
    """Split sizes and a few sample images per class (CPU, uint8) for a data config.

    Keyed by `data_json` (the config's JSON); `_data` is the same config already validated by the form
    (the leading underscore keeps Streamlit from hashing it), so nothing is validated twice.
    """
    import torch

    from core.data import load_data
    bundle = load_data(_data, torch.device("cpu"))
    picks = []
    for label in range(bundle.num_classes):
        picks.extend((bundle.train.y == label).nonzero().flatten()[:per_class].tolist())
    picks = picks[:32]
    return {"sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)},
            "num_classes": bundle.num_classes, "in_chans": bundle.in_chans,
            "images": bundle.train.x[picks].cpu().numpy(),
            "labels": [bundle.class_names[int(bundle.train.y[i])] for i in picks]}


@st.cache_data(show_spinner="Counting parameters and FLOPs...")
def teacher_cards(teachers: tuple[TeacherSpec, ...], num_classes: int, in_chans: int,
                  image_size: int) -> pd.DataFrame:
    """Params and FLOPs of each teacher (display, model, seeds, width, depth), before any training."""
    from core.models import ModelSpec, model_card
    rows = []
    for display, model, seeds, width, depth in teachers:
        card = model_card(ModelSpec(model, width, depth), num_classes, in_chans, image_size)
        rows.append({"teacher": display, "model": model, "seeds": seeds,
                     "params": card["params"], "flops": card["flops"]})
    return pd.DataFrame(rows)


@st.cache_resource
def job_manager(data_dir: str | None = None):
    """The one JobManager of this server process, shared by every browser session."""
    from core.jobs import shared_manager
    return shared_manager(data_dir)


def run_store():
    """The run store the job manager writes (the same SQLite file the CLI uses)."""
    return job_manager().store


@st.cache_data(show_spinner=False)
def student_card(model: str, width: float | None, depth: float | None, num_classes: int, in_chans: int,
                 image_size: int) -> dict:
    """Params and FLOPs of a student (timm name, width and depth multipliers)."""
    from core.models import ModelSpec, model_card
    return model_card(ModelSpec(model, width, depth), num_classes, in_chans, image_size, field="student.model")


class PickedRun(NamedTuple):
    """A finished run chosen on a page: its store record and its validated results."""

    record: Any          # core.store.RunRecord
    results: Any         # core.results.RunResults


def pick_run_with_results(key: str) -> PickedRun | None:
    """A finished run chosen among the store's (the selected run first), its results validated; None, said why."""
    from core.errors import KdlabError
    store = run_store()
    runs = store.list_runs(status="done")
    done = [] if runs.empty else list(runs["id"])
    if not done:
        st.info("No finished run yet: launch one on the Setup page and come back when it is done.")
        return None
    selected = st.session_state.get("selected_run")
    run_id = st.selectbox("Run", done, index=done.index(selected) if selected in done else 0, key=key)
    try:
        run = store.get_run(run_id, require_dir=False)
    except KdlabError as err:
        st.warning(str(err))
        return None
    if not run.results:
        st.warning(f"run {run_id} has no stored results (its results.json is missing or unreadable)")
        return None
    from core.results import read_results
    try:
        results = read_results(run.results, where=f"run {run_id}: results")
    except KdlabError as err:
        st.error(str(err))
        return None
    if not results.finished:
        st.warning(f"run {run_id} has no comparison yet (stages done: {', '.join(results.stages_done) or 'none'})")
        return None
    return PickedRun(run, results)


@st.cache_data(show_spinner=False)
def test_outputs(run_dir: str, name: str) -> dict | None:
    """A run's per-example test outputs as numpy arrays (None when the file is missing or unreadable)."""
    from pathlib import Path
    from safetensors.numpy import load_file
    path = Path(run_dir) / name
    if not name or not path.is_file():
        # An older run, or one whose folder moved: the page says so and shows the rest.
        log.info("run folder %s has no per-example outputs file %r", run_dir, name)
        return None
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - any reader error means the same: no per-example panels
        # Safe to swallow: the page says the outputs are missing and draws every panel that needs only
        # results.json; the log keeps what was wrong with the file.
        log.warning("%s cannot be read (%s: %s); the Diagnostics page shows it as missing", path,
                    type(err).__name__, err)
        return None


# -- live reads of the run store (Runs page) ------------------------------------------------------
# Keyed by the store's folder, so two stores (tests, --store) never share an entry.


@st.cache_data(ttl=LIVE_TTL, show_spinner=False, max_entries=4)
def run_listing(data_dir: str) -> pd.DataFrame:
    """The store's run listing, shared by the reruns (fragments, sessions) of the last LIVE_TTL seconds."""
    return _store_for(data_dir).list_runs()


@st.cache_resource(show_spinner=False, max_entries=32)
def _metric_frame(data_dir: str, run_id: str, kind: str, version: float) -> pd.DataFrame:
    # Shared, not copied (cache_resource): callers only read it. `version` (the run row's `updated`)
    # changes with every progress update, so a training run is read again and a finished one never.
    store = _store_for(data_dir)
    return store.epoch_metrics(run_id) if kind == "epoch" else store.step_metrics(run_id)


def metric_names(data_dir: str, run_id: str, kind: str, version: float) -> list[str]:
    """The metrics a run recorded per `kind` ('epoch' or 'step'), in the order first seen."""
    return list(dict.fromkeys(_metric_frame(data_dir, run_id, kind, version)["metric"]))


@st.cache_resource(show_spinner=False, max_entries=32)
def curve_figure(data_dir: str, run_id: str, kind: str, metrics: tuple[str, ...], version: float) -> go.Figure:
    """Live curves of a run's metrics against `kind` ('epoch' or 'step'), one panel each, built once per
    version of the run.

    The figure is shared between reruns and sessions; st.plotly_chart only reads it. Step series come
    from the store already downsampled (RunStore.step_metrics); the figure cuts nothing further.
    """
    from dashboard import figures
    frame = _metric_frame(data_dir, run_id, kind, version)
    if len(metrics) > 1:
        return figures.training_curves_side_by_side(frame, metrics, x=kind)
    fig = figures.training_curves(frame, metrics[0], x=kind)
    if kind == "step" and not figures.is_empty(fig):
        fig.update_layout(title=f"{metrics[0]} per step (every train.log_every steps)")
    return fig


def _store_for(data_dir: str) -> RunStore:
    """The shared manager's store when it is that folder (the usual case), else a store opened on it."""
    store = run_store()
    if str(store.data_dir) == data_dir:
        return store
    from core.store import RunStore
    return RunStore(data_dir)
