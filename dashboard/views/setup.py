"""Setup: data set, teachers, weighting, distillation and student, validated inline; Launch."""

from __future__ import annotations

import copy

import pandas as pd
import streamlit as st

from core import config as config_mod
from core.data import list_datasets
from core.distill import kd_loss_doc, list_kd_losses
from core.ensemble import combiner_doc, list_combiners
from core.errors import KdlabError
from core.models import list_models, pretrained_status
from dashboard import figures, sweeps
from dashboard.state import data_preview, job_manager, student_card, teacher_cards

st.title("kdlab")
st.caption("Ensemble image classifiers, then distil the ensemble into one small, fast student.")

presets = config_mod.list_presets()
preset_name = st.selectbox("Preset", presets, index=0, key="preset",
                           help="Bundled experiment settings; digits-demo runs on any CPU in about a minute.")
# Widgets keep their own state under these keys; a newly loaded config must reset them to its values.
FORM_KEYS = ("data_name", "image_size", "teachers", "scheme", "temperature", "alpha", "loss", "teaching",
             "student_model", "student_width", "student_depth", "student_seeds", "epochs", "student_epochs",
             "student_lr", "device")


def load_form(raw_config: dict, source: str) -> None:
    st.session_state["raw"] = raw_config
    st.session_state["raw_from"] = source
    for key in FORM_KEYS:
        st.session_state.pop(key, None)


loaded = st.session_state.pop("loaded_config", None)  # from the Compare page
if loaded is not None:
    load_form(loaded, "loaded")
elif st.session_state.get("preset_seen") != preset_name or "raw" not in st.session_state:
    load_form(config_mod.preset(preset_name), preset_name)  # a preset picked (or the first visit)
st.session_state["preset_seen"] = preset_name
if st.session_state["raw_from"] == "loaded":
    st.info("Editing a config loaded from the Compare page; pick a preset to start over.")
raw = copy.deepcopy(st.session_state["raw"])
problems: dict[str, str] = {}


def field_error(path: str) -> None:
    """Show the validation message of one field right under its widget."""
    for key, msg in problems.items():
        if key == path or key.startswith(path + "."):
            st.error(f"{key}: {msg}")


data_tab, teacher_tab, ensemble_tab, student_tab = st.tabs(["Data", "Teachers", "Ensemble & distillation",
                                                           "Student & training"])
with data_tab:
    data = raw.setdefault("data", {})
    names = list_datasets()
    data["name"] = st.selectbox("Data set", names, index=names.index(data.get("name", "digits")), key="data_name")
    data["image_size"] = st.number_input("Image size (px)", 8, 512, int(data.get("image_size", 16)), key="image_size")

with teacher_tab:
    teachers = pd.DataFrame([{"model": t.get("model", ""), "seeds": int(t.get("seeds", 1)),
                              "width": t.get("width"), "pretrained": bool(t.get("pretrained", False))}
                             for t in raw.get("teachers", [])])
    edited = st.data_editor(teachers, num_rows="dynamic", key="teachers", width="stretch",
                            column_config={"model": st.column_config.TextColumn("timm model", required=True),
                                           "seeds": st.column_config.NumberColumn("seeds", min_value=1, max_value=20),
                                           "width": st.column_config.NumberColumn("width", min_value=0.05, max_value=4.0),
                                           "pretrained": st.column_config.CheckboxColumn("pretrained")})
    raw["teachers"] = [{k: v for k, v in row.items() if v is not None and not (isinstance(v, float) and pd.isna(v))}
                       for row in edited.to_dict("records") if row.get("model")]
    with st.expander("Search timm models"):
        pattern = st.text_input("Name pattern", "resnet*", key="model_search")
        st.dataframe(pd.DataFrame(list_models(pattern, limit=30)), hide_index=True, width="stretch")
    for i, t in enumerate(raw["teachers"]):
        if t.get("pretrained") and not t.get("weights_file"):
            ok, status = pretrained_status(t["model"], f"teachers.{i}.pretrained")
            (st.info if ok else st.warning)(f"teachers.{i}: {status}")

with ensemble_tab:
    ens = raw.setdefault("ensemble", {})
    schemes = list_combiners()
    ens["scheme"] = st.selectbox("Weighting scheme", schemes, index=schemes.index(ens.get("scheme", "mean_logit")),
                                 key="scheme")
    st.code(combiner_doc(ens["scheme"]), language="text")
    d = raw.setdefault("distill", {})
    left, right = st.columns(2)
    d["temperature"] = left.slider("Temperature T", 0.5, 20.0, float(d.get("temperature", 4.0)), 0.5, key="temperature")
    d["alpha"] = right.slider("alpha (weight of the distillation term)", 0.0, 1.0, float(d.get("alpha", 0.9)), 0.05,
                              key="alpha")
    losses = list_kd_losses()
    d["loss"] = left.selectbox("Distillation loss", losses, index=losses.index(d.get("loss", "hinton")), key="loss")
    modes = ["views", "cached", "live"]
    d["teaching"] = right.selectbox("Teaching", modes, index=modes.index(d.get("teaching", "views")), key="teaching",
                                    help="views: teacher logits cached per augmentation view; cached: plain "
                                    "images only; live: teachers run on every student batch.")
    with st.expander("Loss formula"):
        st.code(kd_loss_doc(d["loss"]), language="text")

with student_tab:
    s = raw.setdefault("student", {})
    tr = raw.setdefault("train", {})
    a, b, c = st.columns(3)
    s["model"] = a.text_input("Student timm model", s.get("model", "resnet10t"), key="student_model")
    s["width"] = b.number_input("Student width (empty = the model as published)", 0.05, 4.0, s.get("width"), 0.125,
                                key="student_width")
    s["depth"] = c.number_input("Student depth (empty = as published)", 0.05, 4.0, s.get("depth"), 0.25,
                                key="student_depth")
    s["seeds"] = a.number_input("Student seeds", 1, 20, int(s.get("seeds", 3)), key="student_seeds")
    tr["epochs"] = b.number_input("Epochs", 1, 10_000, int(tr.get("epochs", 10)), key="epochs")
    s["epochs"] = c.number_input("Student epochs (0 = same)", 0, 10_000, int(s.get("epochs") or 0), key="student_epochs") or None
    lr = b.number_input("Student learning rate (0 = same as teachers)", 0.0, 10.0, float(s.get("lr") or 0.0),
                        0.001, format="%.4f", key="student_lr")
    s["lr"] = lr or None
    devices = ["auto", "cpu", "cuda"]
    raw["device"] = a.selectbox("Device", devices, index=devices.index(raw.get("device", "auto"))
                                if raw.get("device", "auto") in devices else 0, key="device")

problems = config_mod.problems(raw)
cfg = None
if problems:
    st.subheader("Fix before launching")
    for key, msg in problems.items():
        st.error(f"{key}: {msg}")
else:
    cfg = config_mod.validate(raw)
    st.session_state["raw"] = raw

left, right = st.columns([3, 2])
preview = None
with left:
    st.subheader(f"Data: {data['name']}")
    try:
        preview = data_preview(cfg.data.model_dump_json() if cfg else config_mod.DataConfig().model_dump_json())
    except KdlabError as err:
        st.warning(str(err))
    if preview is not None:
        sizes = preview["sizes"]
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("train", sizes["train"])
        m2.metric("val", sizes["val"])
        m3.metric("test", sizes["test"])
        m4.metric("classes", preview["num_classes"])
        st.plotly_chart(figures.sample_grid(preview["images"], preview["labels"]), width="stretch", key="sample_grid")
with right:
    st.subheader("Teachers and student")
    if cfg is not None and preview is not None:
        try:
            cards = teacher_cards(cfg.model_dump_json(), preview["num_classes"], preview["in_chans"])
            student = student_card(cfg.model_dump_json(), preview["num_classes"], preview["in_chans"])
            st.dataframe(cards, hide_index=True, width="stretch")
            ratio = student["params"] / cards["params"].mean()
            st.metric("student params", f"{student['params'] / 1e6:.2f}M", f"{ratio:.2f}x the mean teacher",
                      delta_color="off")
            names = list(cards["teacher"]) + ["student"]
            st.plotly_chart(figures.model_cost_bars(names, list(cards["params"]) + [student["params"]],
                                                    list(cards["flops"]) + [student["flops"]]),
                            width="stretch", key="cost_bars")
            st.caption(cfg.decomposition_plan())
        except KdlabError as err:
            st.error(str(err))

    if st.button("Launch", type="primary", disabled=cfg is None, key="launch"):
        try:
            run_id = job_manager().submit(cfg, source="dashboard")
            st.session_state["selected_run"] = run_id
            st.success(f"queued {run_id}: follow it on the Runs page")
        except KdlabError as err:
            st.error(str(err))
    with st.expander("Run it headless"):
        st.code(f"kdlab run --preset {preset_name}", language="bash")
        if cfg is not None:
            st.code(cfg.to_yaml(), language="yaml")

sweeps.launcher(cfg)  # full width: axis names and values need the room
