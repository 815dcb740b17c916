"""Latency and throughput of one model in several runtimes, timed interleaved in the same process.

Runtimes take turns of a few calls each (the first runtime rotating every round) so that a noisy
neighbour on a shared machine slows all of them alike, and each figure is a median over many calls. Batch-1 latency
is the median wall time of one call; throughput is images per second at the large batch.
"""

from __future__ import annotations

import copy
import logging
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

WARMUP_CALLS = 3    # oneDNN / onnxruntime pick kernels and warm allocators on the first calls
MIN_CALLS = 10      # per runtime and batch, so a median and an IQR mean something
BLOCK = 5           # consecutive calls of one runtime per turn (the first is not recorded)
LARGE_BATCH = 256


@dataclass
class RuntimeTiming:
    """One runtime and precision: batch-1 latency and large-batch throughput, with how they were taken."""

    runtime: str               # pytorch-eager | onnxruntime
    precision: str             # fp32 | int8
    latency_ms: float          # median batch-1 call
    latency_iqr_ms: float
    throughput: float          # images/s at `batch`
    batch: int
    calls: int                 # timed calls per batch size
    threads: int
    device: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError as err:
        log.debug("no /proc/cpuinfo (%s)", err)
    return platform.processor() or platform.machine()


def interleaved(calls: dict[str, Callable[[], Any]], seconds: float, min_calls: int = MIN_CALLS,
                block: int = BLOCK) -> dict[str, list[float]]:
    """Seconds per call of each callable, in turns of `block` calls, until `seconds` passed and each has min_calls.

    The first call of each turn is not recorded: switching runtimes costs a wake-up of the other
    runtime's threads (measured at up to 10x a batch-1 eager call on the shared 2-core machine), a cost
    of taking turns, not of either runtime. The first runtime rotates every round.
    """
    names = list(calls)
    block = max(block, 2)  # one unrecorded call plus at least one timed call per turn
    for name in names:
        for _ in range(WARMUP_CALLS):
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    started = time.perf_counter()
    round_index = 0
    while min(len(v) for v in times.values()) < min_calls or time.perf_counter() - started < seconds:
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            for i in range(block):
                t0 = time.perf_counter()
                calls[name]()
                if i:
                    times[name].append(time.perf_counter() - t0)
        round_index += 1
    return times


def _median_iqr(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q2, q3 - q1


def eager_call(model: nn.Module, x: np.ndarray) -> Callable[[], Any]:
    """A batch through the PyTorch model as kdlab runs it on the CPU: fp32, channels_last, inference_mode."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)  # leave the caller's model as it was
    tensor = torch.from_numpy(np.ascontiguousarray(x)).contiguous(memory_format=torch.channels_last)

    def call() -> Any:
        with torch.inference_mode():
            return model(tensor)
    return call


def session_call(session: Any, x: np.ndarray, input_name: str = "images") -> Callable[[], Any]:
    """A batch through an onnxruntime session."""
    feed = {input_name: np.ascontiguousarray(x)}

    def call() -> Any:
        return session.run(None, feed)
    return call


def measure_runtimes(model: nn.Module, sessions: dict[str, Any], example: np.ndarray, *, threads: int,
                     seconds: float = 2.0, batch: int = LARGE_BATCH) -> list[RuntimeTiming]:
    """PyTorch eager fp32 and each onnxruntime session (precision -> session), interleaved, at batch 1 and `batch`.

    `example` is a normalised float32 NCHW array with at least one image; it is tiled to `batch`.
    Sessions must have been made with `threads` intra-op threads; torch runs on `threads` while timing.
    """
    one = example[:1]
    big = np.ascontiguousarray(np.resize(example, (batch, *example.shape[1:])))
    labels = [("pytorch-eager", "fp32")] + [("onnxruntime", precision) for precision in sessions]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for x in (one, big):  # batch-1 calls are interleaved together, then the large-batch calls
            calls = {"pytorch-eager/fp32": eager_call(model, x)}
            calls.update({f"onnxruntime/{p}": session_call(s, x) for p, s in sessions.items()})
            # the large batch takes far longer per call: the same number of calls, a smaller time budget
            results.append(interleaved(calls, seconds if x is one else seconds / 2))
    finally:
        torch.set_num_threads(previous)
    device = f"cpu ({cpu_name()})"
    out = []
    for runtime, precision in labels:
        key = f"{runtime}/{precision}"
        lat, iqr = _median_iqr(results[0][key])
        big_median, _ = _median_iqr(results[1][key])
        out.append(RuntimeTiming(runtime, precision, latency_ms=lat * 1e3, latency_iqr_ms=iqr * 1e3,
                                 throughput=batch / big_median, batch=batch,
                                 calls=min(len(results[0][key]), len(results[1][key])), threads=threads,
                                 device=device))
    return out
