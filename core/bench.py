"""What running a model costs: parameters, FLOPs, latency, throughput and peak memory, and an ensemble's sum.

`measure` runs the model the way the project evaluates it: eval mode, torch.inference_mode, and the
device's precision (channels_last, autocast) from `core.device.precision_for`.
"""

from __future__ import annotations

import logging
import statistics
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# torch.utils.benchmark imports cpp_extension, which warns on every CPU-only machine that no CUDA
# runtime is found; that warning says nothing about kdlab and would reach every CLI user's terminal.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
from torch.utils import benchmark  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from core.device import Precision, precision_for
from core.errors import ConfigError
from core.models import count_flops, count_params

_WARMUP = 3  # forwards before timing: oneDNN/cuDNN pick kernels and allocators warm up on the first calls
_MIN_REPEATS = 10  # timed calls on CUDA at least, so the median and IQR mean something


@dataclass
class Cost:
    """What one forward costs; latency at batch 1, throughput at `batch` images per call."""

    params: int
    flops: int  # per image (FlopCounterMode, 2 per multiply-add)
    latency_ms: float  # median wall time of one batch-1 forward
    latency_iqr_ms: float  # interquartile range of those times (0 when only one timing block fit)
    throughput: float  # images/s at `batch` images per forward (median call time)
    peak_memory_mb: float  # parameters + buffers + peak extra memory of one batch-1 forward (MiB)
    batch: int  # the batch size the throughput was measured at
    threads: int  # CPU threads torch used while timing
    device: str


def _mb(nbytes: int | float) -> float:
    """Bytes to MiB."""
    return nbytes / 2**20


def _state_bytes(model: nn.Module) -> int:
    """Bytes held by parameters and buffers (shared tensors counted once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of op outputs still alive and their peak, one count per storage.

    A storage is alive while any Python tensor on it is; CPU storages are freed at once when the last
    reference goes (no caching allocator), so this is the forward's true peak of tensor memory,
    less scratch buffers that kernels allocate internally.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}  # storage data_ptr -> live tensors on it
        self.sizes: dict[int, int] = {}  # storage data_ptr -> bytes
        self.live = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= self.sizes.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # an output on an input's storage is a view or an in-place result: no new memory
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key in inputs and key not in self.refs):
                continue  # empty, or a view of a parameter, buffer or the input (counted up front)
            if key not in self.refs:
                self.refs[key] = 0
                self.sizes[key] = storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self.refs[key] += 1
            weakref.finalize(t, self._release, key).atexit = False
        return out


def _peak_memory_mb(forward: Callable[[], torch.Tensor], model: nn.Module, x: torch.Tensor,
                    device: torch.device) -> float:
    """Parameters + buffers + input + peak extra memory of one forward, in MiB.

    CUDA: max_memory_allocated above what was allocated before (so data already on the device does
    not count). CPU and others: the peak bytes of live op outputs, tracked by `_LiveBytes`.
    """
    fixed = _state_bytes(model) + x.numel() * x.element_size()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        forward()
        torch.cuda.synchronize(device)
        return _mb(fixed + torch.cuda.max_memory_allocated(device) - before)
    tracker = _LiveBytes()
    with tracker:
        out = forward()
    del out
    return _mb(fixed + tracker.peak)


def _sync(device: torch.device) -> None:
    """Wait for queued work on an asynchronous device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _cpu_times(forward: Callable[[], torch.Tensor], threads: int, min_run_time: float) -> tuple[float, float]:
    """Median and IQR (s) of one call on the CPU via torch.utils.benchmark with `threads` threads."""
    # Timer runs at 1 thread unless told otherwise; num_threads is set for the timing and restored after
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr


def _quartiles(times: list[float]) -> tuple[float, float]:
    """Median and IQR of a list of times."""
    if len(times) < 2:
        return times[0], 0.0
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q2, q3 - q1


def _device_times(forward: Callable[[], torch.Tensor], device: torch.device,
                  min_run_time: float) -> tuple[float, float]:
    """Median and IQR (s) of one call on an asynchronous device, each call timed on its own."""
    times: list[float] = []
    total = 0.0
    while total < min_run_time or len(times) < _MIN_REPEATS:
        if device.type == "cuda":
            # events time the GPU work itself, not the host's launch overhead plus a sync
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward()
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3  # ms -> s
        else:
            t0 = time.perf_counter()
            forward()
            _sync(device)
            elapsed = time.perf_counter() - t0
        times.append(elapsed)
        total += elapsed
    return _quartiles(times)


def _forward_fn(model: nn.Module, x: torch.Tensor, device: torch.device, precision: Precision):
    """A no-argument forward under inference_mode and the device's autocast."""
    def forward() -> torch.Tensor:
        with torch.inference_mode(), precision.autocast(device):
            return model(x)
    return forward


def measure(model: nn.Module, in_chans: int, image_size: int, device: torch.device, *,
            threads: int | None = None, large_batch: int = 256, min_run_time: float = 0.2) -> Cost:
    """Parameters, FLOPs, batch-1 latency, large-batch throughput and peak memory of one model.

    The model is moved to `device` (and to channels_last where the device's precision says so), as
    training does; its train/eval flags are restored afterwards. torch's process-wide thread count is
    set to `threads` while measuring and restored afterwards.
    """
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise ConfigError("threads", f"must be at least 1, got {threads}")
    if large_batch < 1:
        raise ConfigError("large_batch", f"must be at least 1, got {large_batch}")
    if min_run_time <= 0:
        raise ConfigError("min_run_time", f"must be positive seconds, got {min_run_time}")
    device = torch.device(device)
    precision = precision_for(device)
    modes = [(m, m.training) for m in model.modules()]
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    fmt = torch.channels_last if precision.channels_last else torch.contiguous_format

    def batch_of(n: int) -> torch.Tensor:
        # a private generator: measuring must not move the caller's seeded RNG stream
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, in_chans, image_size, image_size, generator=gen)
        return x.to(device).contiguous(memory_format=fmt)

    previous_threads = torch.get_num_threads()
    try:
        params = count_params(model)
        flops = count_flops(model, in_chans, image_size)
        model.eval()
        torch.set_num_threads(threads)  # warm-up and memory pass on the same threads as the timing
        one, big = batch_of(1), batch_of(large_batch)
        fwd_one = _forward_fn(model, one, device, precision)
        fwd_big = _forward_fn(model, big, device, precision)
        for _ in range(_WARMUP):
            fwd_one()
        fwd_big()
        _sync(device)
        peak_mb = _peak_memory_mb(fwd_one, model, one, device)
        if device.type == "cpu":
            lat, iqr = _cpu_times(fwd_one, threads, min_run_time)
            big_time, _ = _cpu_times(fwd_big, threads, min_run_time)
        else:
            lat, iqr = _device_times(fwd_one, device, min_run_time)
            big_time, _ = _device_times(fwd_big, device, min_run_time)
    finally:
        torch.set_num_threads(previous_threads)
        for module, training in modes:
            module.training = training
    return Cost(params=params, flops=flops, latency_ms=lat * 1e3, latency_iqr_ms=iqr * 1e3,
                throughput=large_batch / big_time, peak_memory_mb=peak_mb, batch=large_batch,
                threads=threads, device=str(device))


def ensemble_cost(costs: list[Cost]) -> Cost:
    """The cost of running every member on each input, one after another, with all of them loaded.

    Params, FLOPs and latency add; time per image adds, so throughput = 1 / sum(1 / t_i); peak memory
    adds because every member stays resident (an upper bound: only one member's activations are
    alive at a time). The latency IQR is summed too, a conservative spread. All members must have
    been measured on the same device, threads and batch.
    """
    if not costs:
        raise ValueError("ensemble_cost needs at least one member cost")
    first = costs[0]
    settings = {(c.device, c.threads, c.batch) for c in costs}
    if len(settings) > 1:
        raise ValueError(f"member costs were measured under different (device, threads, batch): {settings}")
    return Cost(params=sum(c.params for c in costs), flops=sum(c.flops for c in costs),
                latency_ms=sum(c.latency_ms for c in costs),
                latency_iqr_ms=sum(c.latency_iqr_ms for c in costs),
                throughput=1.0 / sum(1.0 / c.throughput for c in costs),
                peak_memory_mb=sum(c.peak_memory_mb for c in costs),
                batch=first.batch, threads=first.threads, device=first.device)
