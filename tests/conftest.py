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


@pytest.fixture
def sweep_row():
    """A factory of sweep rows with the given scores (the rest arbitrary but valid)."""
    from core.results.sweep import SweepRow

    def make(val_acc, test_acc=0.5, val_nll=None) -> SweepRow:
        return SweepRow(point="p", kd_val_acc=val_acc, kd_val_nll=val_nll, kd_test_acc_mean=test_acc,
                        kd_test_acc_std=0.0, kd_test_nll_mean=0.3, scratch_test_acc_mean=0.5,
                        scratch_test_acc_std=0.0, paired_gain_mean=0.0, paired_gain_std=0.0, ensemble_test_acc=0.9,
                        gain_recovery=None, gain_recovery_per_seed_mean=None, gain_recovery_per_seed_std=None,
                        seeds=1, kd_train_seconds=1.0)
    return make
