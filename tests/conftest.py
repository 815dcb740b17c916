"""Shared fixtures: tiny data and tiny models so the suite runs in minutes on 2 cores."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads libgomp). On the 2 shared
# cores, spinning made tests/test_pipeline.py + tests/test_train.py take 250 s instead of 30 s, and
# job worker threads each bring their own OpenMP team.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from core.config import DataConfig, TrainConfig

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def run_store_dir(tmp_path_factory):
    """Point the default run store at a temporary folder, so no test writes into the repository."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("kdlab-runs")
        mp.setenv("KDLAB_RUNS", str(path))
        yield path


@pytest.fixture(scope="session")
def shapes_bundle():
    """400 grey 16 px images of 4 clearly distinct shapes, on the CPU."""
    from core.data import load_data
    return load_data(DataConfig(name="shapes", count=400, image_size=16, num_classes=4, noise=0.05),
                     torch.device("cpu"))


@pytest.fixture
def quick_train() -> TrainConfig:
    return TrainConfig(epochs=3, batch_size=32, lr=3e-3, log_every=2)
