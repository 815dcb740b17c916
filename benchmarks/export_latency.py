"""The digits-demo student at batch 1 and 256: PyTorch eager against onnxruntime fp32 and int8.

    python benchmarks/export_latency.py [--run DIR] [--threads 2] [--repeats 7] [--seconds 1.0]

Without --run, the digits-demo preset is trained into a temporary folder first (about a minute on 2
cores). Its student (the distilled seed with the best val accuracy) is exported with
`core.export.export_model` (onnx and int8, each verified on the test split), then timed: every repeat
calls the three runtimes in turn (core.export.timing.interleaved) for `--seconds` at batch 1, then at
batch 256; a figure is the median over repeats of each repeat's median, and a ratio to eager is the
median over repeats of that repeat's ratio, so a noisy neighbour slows both sides of a ratio alike.
Accuracy is each runtime's on the test split (from the export's verification).

`--widths` adds resnet10t students of other widths at the same input (random weights, calibrated on
the same train images; speed only) to show where int8 starts to pay at batch 256. `--pt2e` also
times PyTorch's own int8 flow (torchao's PT2E with the X86 inductor quantizer, calibrated on the
same 512 train images), in eager mode and compiled by inductor; it needs `pip install torchao`,
which kdlab does not depend on (see core/export/quantize.py for why onnxruntime's is the one kdlab ships).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import config  # noqa: E402  (core sets OMP_WAIT_POLICY=PASSIVE before torch's threads start)
from core.data import load_data  # noqa: E402
from core.export import export_model  # noqa: E402
from core.export import formats as fmt  # noqa: E402
from core.export.quantize import quantize_int8  # noqa: E402
from core.export.timing import cpu_name, eager_call, interleaved, session_call  # noqa: E402
from core.models import ModelSpec, build_model, count_params  # noqa: E402
from core.pipeline import prepare, run_experiment  # noqa: E402

LATENCY_GOAL = 0.2       # onnxruntime fp32 batch-1 latency / eager
INT8_SPEED_GOAL = 1.5    # int8 / onnxruntime fp32 throughput at batch 256
INT8_DROP_GOAL = 0.005   # test accuracy, fp32 - int8
BIG = 256


def _timed(model, sessions: dict[str, object], x: np.ndarray, seconds: float, repeats: int, threads: int
           ) -> dict[str, list[float]]:
    """Per repeat: the median seconds per call of eager and each session, interleaved."""
    torch.set_num_threads(threads)
    calls = {"eager": eager_call(model, x), **{k: session_call(s, x) for k, s in sessions.items()}}
    per_repeat: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        times = interleaved(calls, seconds)
        for k, v in times.items():
            per_repeat[k].append(statistics.median(v))
    return per_repeat


def _ratio(per_repeat: dict[str, list[float]], a: str, b: str) -> float:
    """Median over repeats of a's time over b's."""
    return statistics.median(x / y for x, y in zip(per_repeat[a], per_repeat[b]))


def _train_demo(folder: Path) -> Path:
    cfg = config.load(preset_name="digits-demo")
    run_experiment(prepare(cfg, folder), folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished digits-demo run folder (default: train one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="per repeat and batch size")
    parser.add_argument("--widths", default="0.125,0.5,1.0", help="extra resnet10t widths (speed only); '' for none")
    parser.add_argument("--pt2e", action="store_true", help="also time torchao's PT2E int8 (eager and inductor)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-export-") as tmp:
        run = args.run or _train_demo(Path(tmp) / "run")
        result = export_model(run, Path(tmp) / "ship", formats="onnx", quantize="int8", threads=args.threads,
                              timing_seconds=0.5)
        checks = {c.precision: c for c in result.checks}
        model_name = result.model
        ship = result.out
        from core.export.resolve import load_model, resolve_source
        source = resolve_source(run, model_name)
        data = load_data(source.cfg.data, torch.device("cpu"))
        model = load_model(source, data)
        sessions = {"fp32": fmt.onnx_session(ship / fmt.ONNX_FILE, args.threads),
                    "int8": fmt.onnx_session(ship / fmt.INT8_FILE, args.threads)}
        x = data.normalize(data.test.x).numpy()
        one = np.ascontiguousarray(x[:1])
        big = np.ascontiguousarray(np.resize(x, (BIG, *x.shape[1:])))
        at1 = _timed(model, sessions, one, args.seconds, args.repeats, args.threads)
        at256 = _timed(model, sessions, big, args.seconds, args.repeats, args.threads)
        eager_acc = result.card["verified_test_acc"]
        extra = []
        for width in [float(w) for w in args.widths.split(",") if w.strip()]:
            extra.append(_width_row(width, data, Path(tmp), args))
        pt2e_lines = _pt2e(model, data, one, big, args) if args.pt2e else []

    print(f"{model_name} of digits-demo ({source.spec.name} width {source.spec.width}, "
          f"{count_params(model) / 1e6:.3f}M params, {data.image_size} px); cpu {cpu_name()}, {args.threads} threads, "
          f"torch {torch.__version__}; {args.repeats} repeats x {args.seconds:g} s per batch size; load average "
          f"{_load()} at the end")
    print(f"{'runtime':<18} {'batch-1 ms':>10} {'x eager':>8} {'img/s @256':>11} {'x eager':>8} {'test acc':>9}")
    rows = [("pytorch eager", "eager", eager_acc), ("onnxruntime fp32", "fp32", checks["fp32"].test_acc),
            ("onnxruntime int8", "int8", checks["int8"].test_acc)]
    for label, key, acc in rows:
        lat = statistics.median(at1[key]) * 1e3
        thr = BIG / statistics.median(at256[key])
        print(f"{label:<18} {lat:10.3f} {_ratio(at1, key, 'eager'):8.3f} {thr:11.0f} "
              f"{1 / _ratio(at256, key, 'eager'):8.2f} {acc:9.4f}")
    lat_ratio = _ratio(at1, "fp32", "eager")
    speed = _ratio(at256, "fp32", "int8")  # fp32 time / int8 time = int8 throughput / fp32 throughput
    drop = checks["fp32"].test_acc - checks["int8"].test_acc
    print(f"goal: onnxruntime fp32 batch-1 latency <= {LATENCY_GOAL}x eager: {lat_ratio:.3f}x "
          f"({'met' if lat_ratio <= LATENCY_GOAL else 'missed'})")
    print(f"goal: int8 throughput at batch {BIG} >= {INT8_SPEED_GOAL}x onnxruntime fp32: {speed:.2f}x "
          f"({'met' if speed >= INT8_SPEED_GOAL else 'missed'})")
    print(f"goal: int8 test-accuracy drop <= {100 * INT8_DROP_GOAL:.1f} points: {100 * drop:+.2f} points "
          f"({'met' if drop <= INT8_DROP_GOAL + 1e-9 else 'missed'})")
    if extra:
        print(f"\nwhere int8 pays (resnet10t at {data.image_size} px, random weights, batch {BIG}, same threads):")
        print(f"{'width':>6} {'params':>8} {'fp32 img/s':>11} {'int8 img/s':>11} {'int8/fp32':>9}")
        for width, params, fp32, int8 in extra:
            print(f"{width:6.3f} {params / 1e6:7.3f}M {fp32:11.0f} {int8:11.0f} {int8 / fp32:9.2f}")
    for line in pt2e_lines:
        print(line)


def _load() -> str:
    """The 1-minute load average: how busy the shared machine was (2 cores: above 2 means contention)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


def _pt2e(model, data, one: np.ndarray, big: np.ndarray, args) -> list[str]:
    """torchao PT2E int8 (X86 inductor quantizer), eager and compiled, beside fp32 eager: report lines."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as err:
        return [f"\npt2e: skipped ({err}; pip install torchao to time it)"]
    from core.evaluate import logits_metrics
    from core.export.quantize import CALIBRATION_BATCH, calibration_rows
    example = torch.from_numpy(one)
    program = torch.export.export(model, (torch.cat([example, example]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(program, quantizer)
    rows = calibration_rows(len(data.train))
    with torch.no_grad():
        for i in range(0, len(rows), CALIBRATION_BATCH):
            prepared(data.normalize(data.train.x[rows[i:i + CALIBRATION_BATCH]]))
    converted = convert_pt2e(prepared)
    started = time.perf_counter()
    with torch.no_grad():
        compiled = torch.compile(converted)
        compiled(torch.from_numpy(big))
        compiled(example)
    compile_s = time.perf_counter() - started
    with torch.no_grad():
        acc = logits_metrics(compiled(data.normalize(data.test.x)), data.test.y)["acc"]

    def call(m, x):
        tensor = torch.from_numpy(x)

        def run():
            with torch.no_grad():
                return m(tensor)
        return run
    lines = [f"\npt2e int8 (torchao, X86 inductor quantizer; inductor compile {compile_s:.0f} s; test acc {acc:.4f}):"]
    for label, x in (("batch 1", one), (f"batch {BIG}", big)):
        times = interleaved({"eager fp32": call(model, x), "pt2e eager": call(converted, x),
                             "pt2e inductor": call(compiled, x)}, args.seconds * 3)
        lines.append(f"  {label}: " + ", ".join(f"{k} {statistics.median(v) * 1e3:.3f} ms" for k, v in times.items()))
    return lines


def _width_row(width: float, data, tmp: Path, args) -> tuple[float, int, float, float]:
    """(width, params, fp32 img/s, int8 img/s) at batch 256 of an untrained resnet10t of that width."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet10t", width=width), data.num_classes, data.in_chans,
                        image_size=data.image_size).eval()
    example = data.normalize(data.test.x[:2])
    program = fmt.export_program(model, example)
    prep = fmt.Preprocessing.of(data)
    fp32_path, int8_path = tmp / f"w{width}.onnx", tmp / f"w{width}.int8.onnx"
    fmt.write_onnx(program, fp32_path, prep, "benchmark")
    quantize_int8(fp32_path, int8_path, data)
    sessions = {"fp32": fmt.onnx_session(fp32_path, args.threads), "int8": fmt.onnx_session(int8_path, args.threads)}
    x = data.normalize(data.test.x).numpy()
    big = np.ascontiguousarray(np.resize(x, (BIG, *x.shape[1:])))
    per = _timed(model, sessions, big, args.seconds, max(3, args.repeats // 2), args.threads)
    return (width, count_params(model), BIG / statistics.median(per["fp32"]), BIG / statistics.median(per["int8"]))


if __name__ == "__main__":
    main()
