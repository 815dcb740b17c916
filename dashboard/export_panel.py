"""The Export panel: pick a model of a run and formats, export in the background, see the checks, download a zip.

`export_panel(run)` draws it for a run (a store record with `.id` and `.run_dir`, or a run/sweep
folder). The export is a job of the app's queue (core.jobs.ExportJob: it waits for the CPU worker
like a run); its progress refreshes every second while the rest of the page stays usable. A finished
export is read back from its folder, so a page reload still shows it and its download.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import streamlit as st

from core.errors import KdlabError
from core.export import FORMATS, is_export_folder, model_names, read_card, zip_folder
from dashboard.access import may_operate, refuse
from dashboard.state import job_manager

if TYPE_CHECKING:  # the exporter (torch, timm, onnx) loads when an export starts, not with the page
    from core.jobs import ExportJob

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


def _folder_and_key(run: Any) -> tuple[Path, str]:
    """The run's folder and the suffix of the panel's widget keys (its run id, or its folder)."""
    if isinstance(run, (str, Path)):
        folder = Path(run)
        return folder, re.sub(r"\W+", "_", str(folder.absolute()))[-48:]
    return Path(run.run_dir), str(run.id)


def handle_key(run: Any) -> str:
    """The session_state key holding this run's export job (a core.jobs.ExportJob), once one started."""
    return f"export_handle_{_folder_and_key(run)[1]}"


def default_out(folder: Path, model: str) -> Path:
    """Where an export of `model` goes by default: <run folder>/exports/<model, folder-safe>."""
    return folder / "exports" / re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-")


@st.cache_data(show_spinner=False, max_entries=8)
def _zip(folder: str, stamp: str) -> bytes:
    """The export folder as zip bytes, cached per folder and card date (`stamp`)."""
    return zip_folder(folder)


def _show_export(folder: Path, key: str) -> None:
    """The verification figures, runtimes and download button of a finished export folder."""
    card = read_card(folder)
    st.success(f"Exported {card['model']['name']} to {folder} ({card['created']})")
    checks = pd.DataFrame([{"format": c["format"], "runtime": f"{c['runtime']} {c['precision']}",
                            "max |logit diff|": c["max_abs_logit_diff"], "bound": c["bound"],
                            "argmax agreement": c["argmax_agreement"], "test acc": c["test_acc"],
                            "acc change": c.get("acc_change"), "passed": c["passed"]}
                           for c in card["verification"]])
    st.dataframe(checks, hide_index=True, key=f"export_checks_{key}")
    runtimes = pd.DataFrame([{"runtime": f"{r['runtime']} {r['precision']}", "batch-1 ms": r["latency_ms"],
                              f"img/s at {r['batch']}": r["throughput"], "test acc": r["test_acc"],
                              "threads": r["threads"], "device": r["device"]} for r in card["runtimes"]])
    st.dataframe(runtimes, hide_index=True, key=f"export_runtimes_{key}")
    for fmt, why in card.get("skipped", {}).items():
        st.warning(f"{fmt} not exported: {why}")
    st.download_button("Download the export (zip)", _zip(str(folder), card["created"]),
                       file_name=f"{folder.name}.zip", mime="application/zip", key=f"export_download_{key}")


def _progress(state_key: str, key: str, polling: bool = False) -> None:
    """The export's progress while it runs (polling: inside the refreshing fragment), else how it ended."""
    handle: ExportJob | None = st.session_state.get(state_key)
    if handle is None:
        return
    if not handle.done:
        st.progress(handle.fraction, text=f"Exporting: {handle.message}")
        if st.button("Cancel export", key=f"export_cancel_{key}"):
            job_manager().cancel_export(handle)
        return
    if polling:
        st.rerun(scope="app")  # redraw the whole panel: the Export button comes back, the result shows
    if handle.error:
        st.error(handle.error)
    elif handle.cancelled:
        st.warning("Export cancelled; nothing was written.")
    elif handle.result is not None:
        _show_export(handle.out, key)


def exported_points(run_dir: str | Path) -> list[dict[str, Any]]:
    """Trade-off rows for the finished exports under <run folder>/exports: one per onnxruntime precision."""
    from core.export import runtime_points
    rows = []
    for card in sorted(Path(run_dir).glob("exports/*/card.json")):
        try:
            points = runtime_points(card.parent)
        except (KdlabError, OSError, ValueError, KeyError) as err:  # a damaged card: no point, the rest still plot
            log.warning("export %s not plotted: %s", card.parent, err)
            continue
        rows += [{"method": p["method"], "kind": "shipped", "test_acc_mean": p["test_acc"], "test_acc_std": 0.0,
                  "seeds": 1, "latency_ms": p["latency_ms"], "params": p["params"], "flops": p["flops"],
                  "throughput": p["throughput"]} for p in points if p.get("test_acc") is not None]
    return rows


def export_panel(run: Any) -> None:
    """Draw the Export panel for a run record or a run/sweep folder."""
    folder, key = _folder_and_key(run)
    st.subheader("Export")
    if not may_operate():
        refuse("Export")
        return
    try:
        names = model_names(folder)
    except KdlabError as err:
        st.info(f"Nothing to export yet: {err}")
        return
    model = st.selectbox("Model", names, key=f"export_model_{key}",
                         help="The first is the distilled seed with the best val accuracy (test never picks).")
    formats = st.multiselect("Formats", list(FORMATS), default=list(FORMATS), key=f"export_formats_{key}",
                             help="safetensors: weights; timm: a folder timm.create_model('local-dir:...') loads; "
                                  "onnx: onnxruntime; pt2: torch.export")
    int8 = st.checkbox("Add an int8 model (onnxruntime static quantization, calibrated on train images)",
                       value=True, key=f"export_int8_{key}")
    max_drop = st.number_input("int8: largest test-accuracy drop allowed (points)", min_value=0.0, max_value=100.0,
                               value=1.0, step=0.5, key=f"export_int8_drop_{key}", disabled=not int8,
                               help="The export fails, writing nothing, if int8 loses more against fp32.")
    out = Path(st.text_input("Export folder", value=str(default_out(folder, model)), key=f"export_out_{key}_{model}"))
    overwrite = is_export_folder(out) and st.checkbox("Replace the earlier export in this folder", value=False,
                                                      key=f"export_overwrite_{key}")
    hkey = handle_key(run)
    running = st.session_state.get(hkey) is not None and not st.session_state[hkey].done
    if st.button("Export", key=f"export_start_{key}", disabled=running or not (formats or int8), type="primary"):
        try:
            st.session_state[hkey] = job_manager().submit_export(folder, out, model=model, formats=formats,
                                                                 quantize="int8" if int8 else None,
                                                                 overwrite=overwrite, int8_max_drop=max_drop / 100)
        except KdlabError as err:
            st.error(str(err))
        running = True
    if running:
        st.fragment(run_every=POLL_SECONDS)(_progress)(hkey, key, polling=True)
    elif st.session_state.get(hkey) is not None:
        _progress(hkey, key)
    elif is_export_folder(out):
        _show_export(out, key)
