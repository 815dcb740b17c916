"""Training throughput: the kdlab loop against a plain PyTorch loop, same model, batch and optimiser.

Both loops train for the same epochs and evaluate val once per epoch. The plain loop is what most
people write: a DataLoader over a TensorDataset of float images, default memory format, fp32.
Runs alternate (plain, kdlab, kdlab+augment, ...) so machine noise hits all of them alike; the
median over repeats is reported.

    python benchmarks/train_throughput.py [--model resnet10t --width 0.5 --image-size 16 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import DataConfig, TrainConfig  # noqa: E402
from core.data import load_data  # noqa: E402
from core.device import resolve_device  # noqa: E402
from core.models import ModelSpec, build_model, count_flops  # noqa: E402
from core.train import ClassificationTask, fit, make_optimizer  # noqa: E402


def plain_loop(model, train_x, train_y, val_x, val_y, cfg: TrainConfig, device) -> float:
    """Seconds for `cfg.epochs` epochs of a textbook PyTorch loop (+ a val pass per epoch)."""
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    train = DataLoader(TensorDataset(train_x, train_y), batch_size=cfg.batch_size, shuffle=True,
                       drop_last=True)
    val = DataLoader(TensorDataset(val_x, val_y), batch_size=1024)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        model.train()
        for x, y in train:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for x, y in val:
                model(x.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def kdlab_loop(model, data, cfg: TrainConfig) -> float:
    start = time.perf_counter()
    fit(model, ClassificationTask(), data, cfg)
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_peak(device, dtype, n: int, reps: int) -> float:
    """Measured dense matmul FLOP/s on this device: the ceiling the training loop is compared to."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--count", type=int, default=2000, help="images, for shapes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    data_cfg = DataConfig(name=args.dataset, image_size=args.image_size, count=args.count, channels=3)
    plain_data = load_data(data_cfg.model_copy(update={"augment": False}), device)
    aug_data = load_data(data_cfg, device)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, log_every=10_000)
    spec = ModelSpec(args.model, width=args.width)
    # The plain loop gets float images already normalised on the CPU, as a TensorDataset would hold them.
    tx = plain_data.normalize(plain_data.train.x).cpu()
    ty = plain_data.train.y.cpu()
    vx = plain_data.normalize(plain_data.val.x).cpu()
    vy = plain_data.val.y.cpu()

    def fresh():
        torch.manual_seed(0)
        return build_model(spec, plain_data.num_classes, plain_data.in_chans, image_size=args.image_size)

    images = args.epochs * (len(plain_data.train) // args.batch_size) * args.batch_size
    timings: dict[str, list[float]] = {"plain PyTorch": [], "kdlab": [], "kdlab + device augment": []}
    # warm-up: first-call allocations and kernel selection
    kdlab_loop(fresh(), plain_data, cfg.model_copy(update={"epochs": 1}))
    for _ in range(args.repeats):
        timings["plain PyTorch"].append(plain_loop(fresh(), tx, ty, vx, vy, cfg, device))
        timings["kdlab"].append(kdlab_loop(fresh(), plain_data, cfg))
        timings["kdlab + device augment"].append(kdlab_loop(fresh(), aug_data, cfg))

    print(f"device={device} threads={args.threads} torch={torch.__version__} data={args.dataset} "
          f"({len(plain_data.train)} train images, {args.image_size}px) model={args.model} "
          f"width={args.width} batch={args.batch_size} epochs={args.epochs} repeats={args.repeats}")
    reference = statistics.median(timings["plain PyTorch"])
    for name, values in timings.items():
        seconds = statistics.median(values)
        print(f"{name:<26} {images / seconds:9.0f} images/s   ratio vs plain {reference / seconds:5.2f}x")
    # Training costs about 3x the forward FLOPs (forward, plus backward for inputs and weights).
    train_flops = 3 * count_flops(fresh(), plain_data.in_chans, args.image_size)
    if device.type == "cuda":
        peak, peak_name = matmul_peak(device, torch.bfloat16, 8192, 20), "bf16"
    else:
        peak, peak_name = matmul_peak(device, torch.float32, 1024, 10), "fp32"
    best = images / min(min(v) for v in timings.values())
    print(f"model {train_flops / 3e6:.2f} MFLOPs/image forward; best loop {best * train_flops / 1e9:.1f} "
          f"GFLOP/s = {100 * best * train_flops / peak:.1f}% of measured {peak_name} matmul peak "
          f"({peak / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
