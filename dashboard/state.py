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
