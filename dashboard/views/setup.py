"""Setup: data set, teachers, weighting, distillation and student, validated inline; Launch."""

from __future__ import annotations

import copy

import pandas as pd
import streamlit as st

from core import config as config_mod
from core.config import DataConfig, DistillConfig, EnsembleConfig, RunConfig, StudentConfig, TeacherConfig, TrainConfig
from core.distill import kd_loss_doc
from core.ensemble import combiner_doc
from core.errors import KdlabError
from core.models import list_models, pretrained_status
from dashboard import fields, figures
from dashboard.access import may_operate
from dashboard.state import data_preview, job_manager, student_card, teacher_cards
from dashboard.tables import show_table

st.title("kdlab")
st.caption("Ensemble image classifiers, then distil the ensemble into one small, fast student.")
if not may_operate():  # viewers watch: the form reads files (data.root, weights) and launches runs
    st.info("You are watching the runs of this class: follow them on the Runs, Trade-off, Diagnostics and "
            "Compare pages. The operator sets up and launches runs here.")
    st.stop()

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
    for key in [k for k in st.session_state if str(k).startswith(fields.KEY_PREFIX)]:  # "More ... settings"
        st.session_state.pop(key, None)


loaded = st.session_state.pop("loaded_config", None)  # from the Compare or Search page
if loaded is not None:
    load_form(loaded, "loaded")
elif st.session_state.get("preset_seen") != preset_name or "raw" not in st.session_state:
    load_form(config_mod.preset(preset_name), preset_name)  # a preset picked (or the first visit)
st.session_state["preset_seen"] = preset_name
if st.session_state["raw_from"] == "loaded":
    st.info("Editing a config loaded from another page (a run, a sweep point or a search trial); pick a preset "
            "to start over.")
raw = copy.deepcopy(st.session_state["raw"])
# Every widget below takes its default, range, choices and help from its field in core/config.py
# (dashboard/fields.py); the labels are the page's own words.
TEACHER_COLUMNS = {"model": "timm model", "seeds": "seeds", "width": "width", "depth": "depth",
                   "pretrained": "pretrained", "weights_file": "weights file", "label": "label"}


data_tab, teacher_tab, ensemble_tab, student_tab = st.tabs(["Data", "Teachers", "Ensemble & distillation",
                                                           "Student & training"])
with data_tab:
    data = raw.setdefault("data", {})
    data["name"] = fields.select_for(DataConfig, "name", data, key="data_name", label="Data set")
    data["image_size"] = fields.number_input_for(DataConfig, "image_size", data, key="image_size",
                                                 label="Image size (px)")
    with st.expander("More data settings"):
        fields.more_settings(DataConfig, data, ("name", "image_size"), "data")

with teacher_tab:
    # One column per TeacherConfig field (a new field gets a column), the page's usual ones first.
    columns = [*[c for c in TEACHER_COLUMNS if c in TeacherConfig.model_fields],
               *[c for c in fields.form_fields(TeacherConfig) if c not in TEACHER_COLUMNS]]
    defaults = {c: fields.field_spec(TeacherConfig, c).default for c in columns}
    teachers = pd.DataFrame([{c: t.get(c, defaults[c]) for c in columns} for t in raw.get("teachers", [])],
                            columns=columns)
    edited = st.data_editor(teachers, num_rows="dynamic", key="teachers", width="stretch", column_order=columns,
                            column_config={c: fields.column_config_for(TeacherConfig, c, TEACHER_COLUMNS.get(c))
                                           for c in columns})
    raw["teachers"] = [{k: v for k, v in row.items()
                        if v is not None and v != "" and not (isinstance(v, float) and pd.isna(v))}
                       for row in edited.to_dict("records") if row.get("model")]
    with st.expander("Search timm models"):
        pattern = st.text_input("Name pattern", "resnet*", key="model_search")
        show_table(pd.DataFrame(list_models(pattern, limit=30), columns=["name", "params"]), key="model_search_table")
    for i, t in enumerate(raw["teachers"]):
        if t.get("pretrained") and not t.get("weights_file"):
            ok, status = pretrained_status(t["model"], f"teachers.{i}.pretrained")
            (st.info if ok else st.warning)(f"teachers.{i}: {status}")

with ensemble_tab:
    ens = raw.setdefault("ensemble", {})
    ens["scheme"] = fields.select_for(EnsembleConfig, "scheme", ens, key="scheme", label="Weighting scheme")
    st.code(combiner_doc(ens["scheme"]), language="text")
    d = raw.setdefault("distill", {})
    left, right = st.columns(2)
    d["temperature"] = fields.number_input_for(DistillConfig, "temperature", d, key="temperature",
                                               label="Temperature T", step=0.5, container=left)
    d["alpha"] = fields.slider_for(DistillConfig, "alpha", d, key="alpha", step=0.05,
                                   label="alpha (weight of the distillation term)", container=right)
    d["loss"] = fields.select_for(DistillConfig, "loss", d, key="loss", label="Distillation loss", container=left)
    d["teaching"] = fields.select_for(DistillConfig, "teaching", d, key="teaching", label="Teaching",
                                      container=right)
    with st.expander("Loss formula"):
        st.code(kd_loss_doc(d["loss"]), language="text")
    with st.expander("More ensemble and distillation settings"):
        fields.more_settings(EnsembleConfig, ens, ("scheme",), "ensemble")
        fields.more_settings(DistillConfig, d, ("temperature", "alpha", "loss", "teaching"), "distill")

with student_tab:
    s = raw.setdefault("student", {})
    tr = raw.setdefault("train", {})
    a, b, c = st.columns(3)
    s["model"] = fields.text_input_for(StudentConfig, "model", s, key="student_model", label="Student timm model",
                                       container=a)
    s["width"] = fields.number_input_for(StudentConfig, "width", s, key="student_width", step=0.125, format="%.3f",
                                         label="Student width (empty = the model as published)", container=b)
    s["depth"] = fields.number_input_for(StudentConfig, "depth", s, key="student_depth", step=0.25, format="%.2f",
                                         label="Student depth (empty = as published)", container=c)
    s["seeds"] = fields.number_input_for(StudentConfig, "seeds", s, key="student_seeds", label="Student seeds",
                                         container=a)
    tr["epochs"] = fields.number_input_for(TrainConfig, "epochs", tr, key="epochs", label="Epochs", container=b)
    s["epochs"] = fields.number_input_for(StudentConfig, "epochs", s, key="student_epochs",
                                          label="Student epochs (empty = Epochs)", container=c)
    s["lr"] = fields.number_input_for(StudentConfig, "lr", s, key="student_lr", step=0.001, format="%.4f",
                                      label="Student learning rate (empty = the teachers')", container=b)
    raw["device"] = fields.select_for(RunConfig, "device", raw, key="device", label="Device", container=a)
    with st.expander("More training settings"):
        fields.more_settings(TrainConfig, tr, ("epochs",), "train")
        fields.more_settings(StudentConfig, s, ("model", "width", "depth", "seeds", "epochs", "lr"), "student")
        fields.more_settings(RunConfig, raw, ("device",), "run")

cfg, problems = fields.validate_form(raw)  # the one validation of this rerun; everything below uses cfg
if problems:
    st.subheader("Fix before launching")
    for key, msg in problems.items():
        st.error(f"{key}: {msg}")
else:
    st.session_state["raw"] = raw

left, right = st.columns([3, 2])
preview = None
with left:
    st.subheader(f"Data: {data['name']}")
    try:
        data_cfg = cfg.data if cfg is not None else DataConfig()
        preview = data_preview(data_cfg.model_dump_json(), data_cfg)
    except KdlabError as err:
        # The run would fail the same way in prepare (e.g. imagefolder without a data.root): no Launch.
        st.error(f"{err} (set it under 'More data settings')" if err.field == "data.root" else str(err))
        cfg = None
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
            shape = (preview["num_classes"], preview["in_chans"], cfg.data.image_size)
            cards = teacher_cards(tuple((t.display, t.model, t.seeds, t.width, t.depth) for t in cfg.teachers), *shape)
            student = student_card(cfg.student.model, cfg.student.width, cfg.student.depth, *shape)
            # the timm name only where a label hides it: the column is what pushes FLOPs off a narrow table
            named = [c for c in cards.columns if c != "model" or (cards["model"] != cards["teacher"]).any()]
            show_table(cards, key="teacher_cards", column_order=named)
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

    if st.button("Launch", type="primary", disabled=cfg is None, key="launch") and may_operate():
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

from dashboard import search_launch  # noqa: E402 - beside its one use: grids and Optuna searches

search_launch.launcher(cfg)  # full width: field names, values and ranges need the room
