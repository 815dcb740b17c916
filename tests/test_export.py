"""Shipping a student: every format round-trips, int8 keeps accuracy, the card matches results.json,
the default pick is val-based, bad input is one line and exit 2, and the dashboard's Export panel works."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from core import config
from core.data import load_data
from core.errors import KdlabError
from core.export import ExportError, FormatUnsupported, VerificationFailed, export_model, runtime_points, zip_folder
from core.export import formats as fmt
from core.export.cli import export_command
from core.export.resolve import load_model, resolve_source
from core.models import build_model
from core.pipeline import prepare, run_experiment
from core.results import read_results
from core.train.checkpoint import load_weights

# Two teachers (the second a width-scaled EfficientNet, which timm's own format cannot express), a
# resnet10t student at width 0.25 with two seeds: about 17 s on 2 cores.
TINY = ["data.name=shapes", "data.count=400", "data.image_size=16", "train.epochs=6", "train.lr=0.01",
        "train.batch_size=32", "teachers=[{model: test_resnet}, {model: test_efficientnet, width: 0.5}]",
        "student.model=resnet10t", "student.width=0.25", "student.seeds=2", "distill.teaching=cached"]
FP32_BOUND = 1e-4
INT8_BOUND = 2 / 80  # int8 may lose at most 2 of the run's 80 test images (2.5 points); the exporter checks it
TIMING = 0.2       # seconds of timing per export: the figures are checked for presence, not speed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export-run") / "run"
    run_experiment(prepare(config.load(overrides=TINY), out), out)
    return out


@pytest.fixture(scope="module")
def shipped(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ship") / "student"
    return export_model(run_dir, out, quantize="int8", timing_seconds=TIMING, int8_max_drop=INT8_BOUND)


@pytest.fixture(scope="module")
def reference(run_dir):
    """The PyTorch student the export should reproduce, its data and its test logits."""
    source = resolve_source(run_dir)
    data = load_data(source.cfg.data, torch.device("cpu"))
    model = load_model(source, data)
    x = data.normalize(data.test.x)
    with torch.inference_mode():
        logits = model(x)
    return source, data, x, logits


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under folder, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(*args: str):
    group = click.Group("kdlab")
    group.add_command(export_command)  # as the lead registers it: main.add_command(export_command)
    return CliRunner().invoke(group, ["export", *args, "--quiet", "--timing-seconds", str(TIMING)])


def one_error_line(result, field: str) -> str:
    """The command's stderr is exactly one `error: <field>: ...; <fix>` line and the exit status is 2."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: ") and "; " in lines[0], result.stderr
    return lines[0]


# -- round trips ----------------------------------------------------------------------------------

def assert_close(logits: torch.Tensor, ref: torch.Tensor) -> None:
    assert logits.shape == ref.shape
    assert (logits - ref).abs().max().item() <= FP32_BOUND
    assert torch.equal(logits.argmax(1), ref.argmax(1))


def test_every_format_round_trips_within_the_bound(shipped, reference):
    source, data, x, ref = reference
    out = shipped.out
    assert shipped.model == source.model.name and not shipped.skipped
    assert {"model.safetensors", "config.json", "model.onnx", "model.int8.onnx", "model.pt2", "README.md",
            "card.json", "config.run.yaml"} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(".*partial*"))  # the temporary sibling was renamed, not left behind

    # safetensors: the weights alone, into a fresh kdlab build
    fresh = build_model(source.spec, data.num_classes, data.in_chans, image_size=data.image_size).eval()
    load_weights(fresh, out / "model.safetensors")
    with torch.inference_mode():
        assert_close(fresh(x), ref)

    # timm's own hub layout, offline
    import timm
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "resnet10t" and cfg["num_classes"] == data.num_classes
    assert cfg["model_args"]["in_chans"] == data.in_chans
    pre = cfg["pretrained_cfg"]
    assert pre["input_size"] == [data.in_chans, 16, 16]
    assert pre["mean"] == pytest.approx(list(data.mean)) and pre["std"] == pytest.approx(list(data.std))
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    with torch.inference_mode():
        assert_close(model(x), ref)

    # onnx in onnxruntime, with a dynamic batch axis and the preprocessing in its metadata
    import onnx
    import onnxruntime as ort
    proto = onnx.load(str(out / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["kdlab.mean"]) == pytest.approx(list(data.mean))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert_close(torch.from_numpy(session.run(None, {"images": x.numpy()})[0]), ref)
    for n in (1, 7):
        assert session.run(None, {"images": x[:n].numpy()})[0].shape == (n, data.num_classes)

    # pt2: torch.export.load after kdlab's no-pickle check, and plainly
    assert_close(fmt.load_pt2(out / "model.pt2")(x), ref)
    assert_close(torch.export.load(str(out / "model.pt2")).module()(x[:5]), ref[:5])

    for check in shipped.checks:
        assert check.passed and check.examples == len(data.test)
        if check.precision == "fp32":
            assert check.max_abs_logit_diff <= FP32_BOUND and check.argmax_agreement == 1.0


def test_pt2_is_written_without_pickles_and_a_pickle_is_refused(shipped, tmp_path):
    with zipfile.ZipFile(shipped.out / "model.pt2") as z:
        samples = [i for i in z.infolist() if "/data/sample_inputs/" in i.filename]
        assert samples and all(i.file_size == 0 for i in samples)
        weights_cfg = next(n for n in z.namelist() if n.endswith("weights_config.json"))
        config_json = json.loads(z.read(weights_cfg))
        assert not any(meta["use_pickle"] for meta in config_json["config"].values())
        members = {n: z.read(n) for n in z.namelist()}
    # the same archive with one weight marked as pickled is refused before torch.export.load sees it
    first = next(iter(config_json["config"]))
    config_json["config"][first]["use_pickle"] = True
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(bad, "w") as z:
        for name, blob in members.items():
            z.writestr(name, json.dumps(config_json) if name == weights_cfg else blob)
    with pytest.raises(ExportError, match="pickled or unknown payload"):
        fmt.load_pt2(bad)


def test_int8_keeps_accuracy_within_the_bound(shipped):
    card = shipped.card
    int8 = next(c for c in card["verification"] if c["format"] == "int8")
    fp32 = next(c for c in card["verification"] if c["format"] == "onnx")
    assert int8["acc_change"] == pytest.approx(int8["test_acc"] - fp32["test_acc"])
    assert int8["test_acc"] >= fp32["test_acc"] - INT8_BOUND and int8["max_drop"] == INT8_BOUND
    assert int8["examples"] == 80
    assert card["quantization"]["calibration_split"] == "train"
    runtimes = {(r["runtime"], r["precision"]): r for r in card["runtimes"]}
    assert set(runtimes) == {("pytorch-eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")}
    assert runtimes[("onnxruntime", "int8")]["test_acc"] == int8["test_acc"]  # int8's accuracy beside fp32's
    for r in runtimes.values():
        assert r["latency_ms"] > 0 and r["throughput"] > 0 and r["threads"] >= 1 and r["device"].startswith("cpu")


def test_the_card_figures_equal_results_json(shipped, run_dir):
    results = read_results(run_dir / "results.json")
    card = shipped.card
    best = results.best_student("kd")
    assert card["model"]["name"] == f"student/kd/s{best.seed}" and card["selection"]["default"]
    m = card["metrics"]
    assert (m["test_acc"], m["test_nll"], m["val_acc"]) == (best.test_acc, best.test_nll, best.val_acc)
    rows = {r.method: r for r in results.comparison}
    for key, method in (("seeds", "student/kd"), ("scratch", "student/scratch")):
        assert m[key]["test_acc_mean"] == rows[method].test_acc_mean
        assert m[key]["test_acc_std"] == rows[method].test_acc_std and m[key]["n"] == rows[method].seeds
    assert m["gain_recovery"] == results.summary.gain_recovery.model_dump(mode="json")
    assert m["ensemble"]["test_acc"] == results.ensemble().test_acc
    assert (card["model"]["params"], card["model"]["flops"]) == (rows["student/kd"].params, rows["student/kd"].flops)
    d = card["distillation"]
    cfg = config.load(overrides=TINY)
    assert (d["combiner"], d["loss"], d["temperature"], d["alpha"]) == (results.summary.target_scheme, cfg.distill.loss,
                                                                         cfg.distill.temperature, cfg.distill.alpha)
    assert d["teaching"]["mode"] == "cached"
    for t, entry in zip(d["teachers"], results.teachers):
        assert (t["name"], t["test_acc"], t["params"], t["flops"]) == (entry.name, entry.test_acc, entry.params,
                                                                       entry.flops)
        assert t["weights_sha256"] == hashlib.sha256((run_dir / entry.weights).read_bytes()).hexdigest()
        assert t["weights_sha256"].startswith(entry.weights_hash)
    splits = card["data"]["splits"]
    assert {k: v["images"] for k, v in splits.items()} == {"train": results.dataset.train, "val": results.dataset.val,
                                                           "test": results.dataset.test}
    assert all(len(v["sha256"]) == 64 for v in splits.values())
    assert card["verified_test_acc"] == pytest.approx(best.test_acc, abs=1.5 / results.dataset.test)
    assert {"torch", "timm", "onnx", "onnxruntime"} <= {k for k, v in card["environment"].items() if v}
    assert card["reproduce"] == "kdlab run config.run.yaml --out <new run folder>"
    assert config.validate(__import__("yaml").safe_load((shipped.out / "config.run.yaml").read_text())) == cfg
    assert json.loads((shipped.out / "card.json").read_text()) == card
    readme = (shipped.out / "README.md").read_text()
    assert f"{best.test_acc:.4f}" in readme and d["teachers"][0]["weights_sha256"] in readme
    assert "onnxruntime | int8" in readme and "(x / 255 - mean[c]) / std[c]" in readme


def test_runtime_points_for_the_tradeoff_plot(shipped):
    points = runtime_points(shipped.out)
    assert [(p["runtime"], p["precision"]) for p in points] == [("onnxruntime", "fp32"), ("onnxruntime", "int8")]
    for p in points:
        assert p["test_acc"] is not None and p["latency_ms"] > 0 and p["params"] == shipped.card["model"]["params"]
        assert p["method"].startswith(shipped.model)
    assert len(runtime_points(shipped.out, include_eager=True)) == 3
    names = zipfile.ZipFile(io.BytesIO(zip_folder(shipped.out))).namelist()
    assert f"{shipped.out.name}/card.json" in names and f"{shipped.out.name}/model.onnx" in names


# -- the pick ---------------------------------------------------------------------------------------

def test_the_default_pick_uses_val_and_never_test(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("cache"))
    raw = json.loads((copy / "results.json").read_text())
    for s0_val, s1_val in ((0.9, 0.5), (0.5, 0.9)):
        for s in raw["students"]:
            if s["kind"] == "kd":
                # the val-best seed has the worse test score, so a pick on test would differ
                s["val_acc"] = s0_val if s["seed"] == 0 else s1_val
                s["test_acc"] = 0.1 if s["val_acc"] == 0.9 else 0.99
        (copy / "results.json").write_text(json.dumps(raw))
        source = resolve_source(copy)
        assert source.model.name == f"student/kd/s{0 if s0_val > s1_val else 1}" and source.default_pick
        assert "val" in source.selection and "test not consulted" in source.selection
    assert resolve_source(copy, "student/scratch").model.student_kind == "scratch"
    assert resolve_source(copy, "teacher/test_resnet/s0").model.role == "teacher"


# -- bad input through the CLI ----------------------------------------------------------------------

def test_bad_input_is_one_line_exit_2_and_nothing_is_lost(run_dir, tmp_path):
    before = snapshot(run_dir)
    out = tmp_path / "out"
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("cache", "teachers"))
    raw = json.loads((broken / "results.json").read_text())

    raw_no_students = {**raw, "students": [], "stages_done": ["teachers", "ensembles"], "status": "cancelled",
                       "comparison": [], "summary": None, "diagnostics": None}
    (broken / "results.json").write_text(json.dumps(raw_no_students))
    assert "no students" in one_error_line(cli(str(broken), "--out", str(out)), "RUN")

    (broken / "results.json").write_text(json.dumps({**raw, "status": "running"}))
    assert "still training" in one_error_line(cli(str(broken), "--out", str(out)), "RUN")

    line = one_error_line(cli(str(run_dir), "--model", "student/kd/s9", "--out", str(out)), "--model")
    assert "student/kd/s0" in line  # the fix lists the names that exist
    assert "unknown format 'tflite'" in one_error_line(cli(str(run_dir), "--format", "onnx,tflite", "--out", str(out)),
                                                       "--format")
    assert "int8" in one_error_line(cli(str(run_dir), "--quantize", "fp8", "--out", str(out)), "--quantize")
    assert "RUN" in one_error_line(cli(str(tmp_path / "no-such-run"), "--out", str(out)), "RUN")

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "holds other files" in one_error_line(cli(str(run_dir), "--out", str(busy)), "--out")
    assert (busy / "notes.txt").read_text() == "mine" and [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
    assert snapshot(run_dir) == before


def test_a_run_still_training_in_the_store_is_refused(run_dir, tmp_path):
    from core.store import RunStore
    store_dir = tmp_path / "store"
    with RunStore(store_dir) as store:
        run_id = store.create_run(config.load(overrides=TINY), source="cli", run_dir=run_dir)
    line = one_error_line(cli(run_id, "--store", str(store_dir), "--out", str(tmp_path / "out")), "RUN")
    assert run_id in line and "still training" in line and "queued" in line
    with RunStore(store_dir) as store:
        assert store.get_run(run_id).status == "queued"  # the store is read, not changed


def test_a_format_the_model_cannot_take_is_named_and_the_others_export(run_dir, tmp_path):
    out = tmp_path / "teacher"
    result = cli(str(run_dir), "--model", "teacher/test_efficientnet/s0", "--format", "safetensors,timm",
                 "--out", str(out))
    line = one_error_line(result, "--format")
    assert "timm" in line and "width/depth multiplier" in line
    card = json.loads((out / "card.json").read_text())
    assert set(card["formats"]) == {"safetensors"} and "timm" in card["skipped"]
    assert card["model"]["role"] == "teacher" and card["distillation"] is None
    assert not (out / "config.json").exists()


def test_an_op_without_onnx_conversion_is_named():
    class ErfInv(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.erfinv(x.flatten(1).tanh() * 0.5)

    program = fmt.export_program(ErfInv(), torch.randn(2, 1, 4, 4))  # torch.export takes it
    prep = fmt.Preprocessing(1, 4, 4, (0.5,), (0.25,))
    with pytest.raises(FormatUnsupported) as err:
        fmt.write_onnx(program, Path("/nonexistent/never-written.onnx"), prep, "doc")
    assert err.value.format == "onnx" and "erf_inv" in str(err.value) and str(err.value).startswith("--format: onnx")


def test_a_failed_check_fails_the_export_with_the_figure_and_leaves_nothing(run_dir, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(VerificationFailed, match=r"max \|dlogit\|") as err:
        # a bound of 0 logits: onnxruntime's fp32 kernels round differently from PyTorch's (~1e-7)
        export_model(run_dir, out, formats="onnx", timing_seconds=TIMING, fp32_bound=0.0)
    assert "onnx" in str(err.value)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_the_command_reports_files_checks_and_speed(run_dir, tmp_path):
    out = tmp_path / "pt"
    result = cli(str(run_dir), "--format", "safetensors", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "verification on the test split" in result.stdout and "pytorch-eager fp32" in result.stdout
    again = cli(str(run_dir), "--format", "safetensors", "--out", str(out))
    assert "earlier export" in one_error_line(again, "--out")
    replaced = cli(str(run_dir), "--format", "safetensors", "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0 and not list(tmp_path.glob(".*"))


# -- a sweep's trial --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    from core.sweep import parse_axis, run_sweep
    base = config.load(overrides=["data.name=shapes", "data.count=240", "data.image_size=16", "train.epochs=2",
                                  "train.batch_size=32", "teachers=[{model: test_resnet}]",
                                  "student.model=resnet10t", "student.width=0.25", "distill.teaching=cached"])
    out = tmp_path_factory.mktemp("export-sweep") / "sweep"
    run_sweep(base, [parse_axis("distill.temperature=1,4")], out, seeds=2)
    return out


def test_a_sweep_trial_exports_with_its_point_figures(sweep_dir, tmp_path):
    from core.sweep import load_sweep
    sweep = load_sweep(sweep_dir)
    source = resolve_source(sweep_dir)
    assert source.trial == sweep.file.best and source.model.name.startswith(f"trial/{sweep.file.best}/student/kd/s")
    assert source.cfg.distill.temperature == sweep.rows[sweep.file.best].value("distill.temperature")
    other = 1 - sweep.file.best
    assert resolve_source(sweep_dir, f"trial/{other}").trial == other
    result = export_model(sweep_dir, tmp_path / "trial", model=f"trial/{other}/student/kd/s1", formats="onnx",
                          timing_seconds=TIMING)
    card = result.card
    row = sweep.rows[other]
    assert card["source"]["kind"] == "sweep" and card["source"]["trial"] == other
    assert card["metrics"]["seeds"]["test_acc_mean"] == row.kd_test_acc_mean
    assert card["metrics"]["scratch"]["test_acc_mean"] == row.scratch_test_acc_mean
    assert card["distillation"]["temperature"] == row.value("distill.temperature")
    assert card["distillation"]["teachers"][0]["measured"] == "at export"


# -- the dashboard panel ----------------------------------------------------------------------------

def _panel_page(folder: str) -> None:
    from dashboard.export_panel import export_panel
    export_panel(folder)


def test_the_export_panel_exports_in_the_background_and_offers_the_zip(run_dir, tmp_path):
    from streamlit.testing.v1 import AppTest

    from dashboard.export_panel import handle_key
    at = AppTest.from_function(_panel_page, kwargs={"folder": str(run_dir)}, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    best = read_results(run_dir / "results.json").best_student("kd")
    assert at.selectbox[0].value == f"student/kd/s{best.seed}"  # the val pick comes first
    out = tmp_path / "panel"
    at.multiselect[0].set_value(["safetensors", "onnx"])
    at.number_input[0].set_value(100 * INT8_BOUND)  # points of test accuracy int8 may lose
    at.text_input[0].set_value(str(out))
    at.run()
    at.button(key=next(b.key for b in at.button if b.key.startswith("export_start"))).click().run()
    assert not at.exception, at.exception
    handle = at.session_state[handle_key(str(run_dir))]
    assert handle.wait(timeout=120), "the export did not finish"
    at.run()
    assert not at.exception, at.exception
    assert any("Exported" in s.value for s in at.success), [e.value for e in at.error]
    tables = [d.value for d in at.dataframe]
    assert set(tables[0]["format"]) == {"safetensors", "onnx", "int8"} and tables[0]["passed"].all()
    assert "onnxruntime int8" in set(tables[1]["runtime"])
    assert at.get("download_button"), "no download button"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "model.onnx", "model.int8.onnx", "card.json"}


def test_an_export_is_a_job_of_the_queue_and_waits_for_the_device(run_dir, tmp_path):
    from core.jobs import JobManager
    from core.store import RunStore
    jobs = JobManager(RunStore(tmp_path / "store"), autostart=False)
    job = jobs.submit_export(run_dir, tmp_path / "ship", formats=["safetensors"], timing_seconds=TIMING)
    dropped = jobs.submit_export(run_dir, tmp_path / "never", formats=["safetensors"])
    assert job.message == "waiting for the device" and not job.done  # no worker yet: it waits in the queue
    with pytest.raises(KdlabError, match="already queued or running"):
        jobs.submit_export(run_dir, tmp_path / "ship")
    assert jobs.cancel_export(dropped) and dropped.done and dropped.cancelled
    jobs.start()
    assert job.wait(timeout=120) and job.error is None, job.error
    assert job.result is not None and (tmp_path / "ship" / "card.json").is_file()
    assert not (tmp_path / "never").exists() and "cancelled before it started" in dropped.message
    failed = jobs.submit_export(tmp_path / "no-such-run", tmp_path / "x")
    assert failed.wait(timeout=60) and failed.status == "failed" and "no-such-run" in failed.error
    jobs.shutdown()
