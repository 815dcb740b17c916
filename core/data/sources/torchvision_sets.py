"""CIFAR-10/100, MNIST and Fashion-MNIST read from local files through torchvision.

Files are downloaded only when data.download is true; otherwise a missing file is a DataError that
says which files to put where.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.config import DataConfig
from core.data.registry import SourceData, register_dataset
from core.errors import DataError

_MNIST_FILES = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                "t10k-labels-idx1-ubyte (unzipped)")


@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    factory: Callable[..., Any]
    layout: str  # what to put under root, for the error message
    flip: bool


def _specs() -> dict[str, _Spec]:
    from torchvision import datasets  # torchvision import is slow; only pay it when used

    return {
        "cifar10": _Spec("cifar10", "CIFAR-10", datasets.CIFAR10,
                         "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)", True),
        "cifar100": _Spec("cifar100", "CIFAR-100", datasets.CIFAR100,
                          "cifar-100-python/ (train, test, meta)", True),
        "mnist": _Spec("mnist", "MNIST", datasets.MNIST, f"MNIST/raw/ with {_MNIST_FILES}", False),
        # Left-right mirrored clothes keep their class, unlike digits.
        "fashion_mnist": _Spec("fashion_mnist", "Fashion-MNIST", datasets.FashionMNIST,
                               f"FashionMNIST/raw/ with {_MNIST_FILES}", True),
    }


def _one_line(err: BaseException, limit: int = 160) -> str:
    """torchvision's messages span lines (one per mirror); errors here are one line."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _open(spec: _Spec, cfg: DataConfig, train: bool) -> Any:
    """The torchvision dataset object, with torchvision's errors turned into DataErrors."""
    if not cfg.root:
        raise DataError("data.root", f"{spec.name} needs a folder with its files",
                        f"set data.root to a folder holding {spec.layout}")
    root = Path(cfg.root).expanduser()
    where = f"put {spec.layout} under {root}"
    try:
        return spec.factory(str(root), train=train, download=cfg.download)
    except RuntimeError as err:
        if cfg.download:
            raise DataError("data.root", f"{spec.title} could not be downloaded into {root} "
                            f"({_one_line(err)})",
                            f"{where} by hand, or retry where the network allows") from None
        raise DataError("data.root", f"{spec.title} files not found or corrupted under {root}",
                        f"{where} or set data.download=true where the network allows") from None
    except OSError as err:  # download failures (URLError) and unreadable files
        action = "could not be downloaded into" if cfg.download else "could not be read from"
        raise DataError("data.root", f"{spec.title} {action} {root} ({_one_line(err)})", where) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AssertionError) as err:
        raise DataError("data.root", f"{spec.title} files under {root} are unreadable "
                        f"({type(err).__name__}: {_one_line(err)})",
                        f"replace them: {where}") from None


def _as_nchw(data: Any) -> torch.Tensor:
    """torchvision `.data` (N, H, W) or (N, H, W, C), numpy or torch -> (N, C, H, W) uint8."""
    t = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
    t = t.to(torch.uint8)
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return t.contiguous()


def _targets(targets: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(targets), dtype=torch.long).clone()


def _load(name: str, cfg: DataConfig) -> SourceData:
    spec = _specs()[name]
    train, test = _open(spec, cfg, True), _open(spec, cfg, False)
    names = [str(c) for c in train.classes]
    return SourceData(x=_as_nchw(train.data), y=_targets(train.targets), class_names=names,
                      flip=spec.flip, test_x=_as_nchw(test.data), test_y=_targets(test.targets))


@register_dataset("cifar10")
def load_cifar10(cfg: DataConfig) -> SourceData:
    """CIFAR-10 (3x32x32, official 10,000-image test split)."""
    return _load("cifar10", cfg)


@register_dataset("cifar100")
def load_cifar100(cfg: DataConfig) -> SourceData:
    """CIFAR-100 fine labels (3x32x32, official test split)."""
    return _load("cifar100", cfg)


@register_dataset("mnist")
def load_mnist(cfg: DataConfig) -> SourceData:
    """MNIST (1x28x28, official test split)."""
    return _load("mnist", cfg)


@register_dataset("fashion_mnist")
def load_fashion_mnist(cfg: DataConfig) -> SourceData:
    """Fashion-MNIST (1x28x28, official test split)."""
    return _load("fashion_mnist", cfg)
