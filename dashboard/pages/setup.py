"""Setup: pick a preset, see the data set and the teachers' cost before anything trains."""

from __future__ import annotations

import streamlit as st

from core import config as config_mod
from core.errors import KdlabError
from dashboard import figures
from dashboard.state import data_preview, teacher_cards

st.title("kdlab")
st.caption("Ensemble image classifiers, then distil the ensemble into one small, fast student.")

presets = config_mod.list_presets()
preset_name = st.selectbox("Preset", presets, index=0, key="preset",
                           help="Bundled experiment settings; digits-demo runs on any CPU.")
try:
    cfg = config_mod.load(preset_name=preset_name)
except KdlabError as err:
    st.error(str(err))
    st.stop()

left, right = st.columns([3, 2])
with left:
    st.subheader(f"Data: {cfg.data.name}")
    try:
        preview = data_preview(cfg.data.model_dump_json())
    except KdlabError as err:
        st.warning(str(err))
        preview = None
    if preview is not None:
        sizes = preview["sizes"]
        a, b, c, d = st.columns(4)
        a.metric("train", sizes["train"])
        b.metric("val", sizes["val"])
        c.metric("test", sizes["test"])
        d.metric("classes", preview["num_classes"])
        st.plotly_chart(figures.sample_grid(preview["images"], preview["labels"]),
                        width="stretch", key="sample_grid")
with right:
    st.subheader("Teachers")
    try:
        if preview is None:
            st.stop()
        cards = teacher_cards(cfg.model_dump_json(), preview["num_classes"], preview["in_chans"])
        st.dataframe(cards, hide_index=True, width="stretch")
        st.plotly_chart(figures.model_cost_bars(list(cards["teacher"]), list(cards["params"]),
                                                list(cards["flops"])), width="stretch", key="cost_bars")
    except KdlabError as err:
        st.error(str(err))
    st.subheader("Run it headless")
    st.code(f"kdlab run --preset {preset_name} --out runs/{preset_name}", language="bash")
    with st.expander("Full config"):
        st.code(cfg.to_yaml(), language="yaml")
