"""Cost of running a model: positive numbers, modes and threads left as found, ensembles add up."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.bench import Cost, ensemble_cost, measure
from core.errors import ConfigError
from core.models import ModelSpec, build_model

CPU = torch.device("cpu")
FAST = dict(threads=1, large_batch=16, min_run_time=0.05)  # timing on 1 thread: steady on a busy 2-core box


def _tiny(width: float | None = None) -> torch.nn.Module:
    return build_model(ModelSpec("test_resnet", width=width), num_classes=4, in_chans=1)


def test_measure_tiny_model_is_positive_and_keeps_train_mode() -> None:
    model = _tiny().train()
    cost = measure(model, 1, 16, CPU, **FAST)
    assert model.training and all(m.training for m in model.modules())
    assert cost.params > 0 and cost.flops > 0
    assert cost.latency_ms > 0 and cost.latency_iqr_ms >= 0
    assert cost.throughput > 0 and cost.peak_memory_mb > 0
    assert (cost.batch, cost.threads, cost.device) == (16, 1, "cpu")
    state_mb = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    assert cost.peak_memory_mb > state_mb  # weights plus activations
    model.eval()
    measure(model, 1, 16, CPU, **FAST)
    assert not any(m.training for m in model.modules())


def test_peak_memory_is_repeatable_and_rng_untouched() -> None:
    model = _tiny()
    torch.manual_seed(0)
    first = measure(model, 1, 16, CPU, **FAST)
    after = torch.rand(3)
    torch.manual_seed(0)
    second = measure(model, 1, 16, CPU, **FAST)
    assert torch.equal(after, torch.rand(3))  # measuring draws nothing from the global RNG
    assert first.peak_memory_mb == second.peak_memory_mb


def test_wider_model_costs_more() -> None:
    small = measure(_tiny(), 1, 16, CPU, **FAST)
    wide = measure(_tiny(width=4.0), 1, 16, CPU, **FAST)
    assert wide.flops > small.flops and wide.params > small.params
    assert wide.peak_memory_mb > small.peak_memory_mb


def test_threads_are_respected_and_restored() -> None:
    before = torch.get_num_threads()
    assert measure(_tiny(), 1, 16, CPU, **FAST).threads == 1
    assert torch.get_num_threads() == before
    torch.set_num_threads(1)  # the default is torch's current count; 1 keeps this fast on a busy box
    try:
        assert measure(_tiny(), 1, 16, CPU, large_batch=4, min_run_time=0.02).threads == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError):
        measure(_tiny(), 1, 16, CPU, threads=0)


def test_ensemble_cost_sums_members() -> None:
    a = Cost(params=10, flops=100, latency_ms=1.0, latency_iqr_ms=0.1, throughput=1000.0,
             peak_memory_mb=2.0, batch=256, threads=2, device="cpu")
    b = replace(a, params=30, flops=300, latency_ms=3.0, latency_iqr_ms=0.2, throughput=250.0,
                peak_memory_mb=5.0)
    s = ensemble_cost([a, b])
    assert (s.params, s.flops) == (40, 400)
    assert s.latency_ms == pytest.approx(4.0) and s.latency_iqr_ms == pytest.approx(0.3)
    assert s.throughput == pytest.approx(200.0)  # 1 / (1/1000 + 1/250) images/s
    assert s.peak_memory_mb == pytest.approx(7.0)
    assert (s.batch, s.threads, s.device) == (256, 2, "cpu")
    assert ensemble_cost([a]) == a
    with pytest.raises(ValueError):
        ensemble_cost([a, replace(b, threads=1)])
    with pytest.raises(ValueError):
        ensemble_cost([])
