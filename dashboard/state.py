"""Cached reads of the engine for pages (keyed by JSON strings so Streamlit can hash them)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st
import torch

from core.config import DataConfig, RunConfig
from core.data import load_data
from core.models import ModelSpec, model_card


@st.cache_data(show_spinner="Loading data set...")
def data_preview(data_json: str, per_class: int = 2) -> dict:
    """Split sizes and a few sample images per class (CPU, uint8) for a data config."""
    bundle = load_data(DataConfig.model_validate(json.loads(data_json)), torch.device("cpu"))
    picks = []
    for label in range(bundle.num_classes):
        picks.extend((bundle.train.y == label).nonzero().flatten()[:per_class].tolist())
    picks = picks[:32]
    return {"sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)},
            "num_classes": bundle.num_classes, "in_chans": bundle.in_chans,
            "images": bundle.train.x[picks].cpu().numpy(),
            "labels": [bundle.class_names[int(bundle.train.y[i])] for i in picks]}


@st.cache_data(show_spinner="Counting parameters and FLOPs...")
def teacher_cards(run_json: str, num_classes: int, in_chans: int) -> pd.DataFrame:
    """Params and FLOPs of each teacher of a run config, before any training."""
    cfg = RunConfig.model_validate(json.loads(run_json))
    rows = []
    for t in cfg.teachers:
        card = model_card(ModelSpec(t.model, t.width, t.depth), num_classes, in_chans, cfg.data.image_size)
        rows.append({"teacher": t.display, "model": t.model, "seeds": t.seeds,
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


def student_card(run_json: str, num_classes: int, in_chans: int) -> dict:
    """Params and FLOPs of the student of a run config."""
    cfg = RunConfig.model_validate(json.loads(run_json))
    s = cfg.student
    return model_card(ModelSpec(s.model, s.width, s.depth), num_classes, in_chans, cfg.data.image_size,
                      field="student.model")


def pick_run_with_results(key: str):
    """A run chosen among those with results (the selected run first); None, with a message, if none."""
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
    if not run.results or "comparison" not in run.results:
        st.warning(f"run {run_id} has no stored results (its results.json is missing or unreadable)")
        return None
    return run


@st.cache_data(show_spinner=False)
def test_outputs(run_dir: str, name: str) -> dict | None:
    """A run's per-example test outputs as numpy arrays (None when the file is missing or unreadable)."""
    from pathlib import Path
    from safetensors.numpy import load_file
    path = Path(run_dir) / name
    if not name or not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged artifact is reported, not raised
        return None
