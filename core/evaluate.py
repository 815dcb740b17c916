"""Scores of predictions and of experiments: accuracy, NLL, ECE, Brier, spread over seeds, gain recovery.

Pure functions of tensors and numbers; every metric is computed in float64 on the tensors' device and
returned as a Python float. NLL is in nats per example.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Floor on the true class's probability before the log: a combiner may give a class exactly 0
# (majority vote, an underflowed fp32 softmax) and one log(0) would make the mean NLL infinite.
# 1e-12 caps a single example's loss at -ln(1e-12) = 27.6 nats, far above any real model's loss.
PROB_FLOOR = 1e-12


def _check(scores: Tensor, y: Tensor, n_bins: int) -> None:
    """Raise ValueError unless scores is (N, K) with N >= 1, y is (N,) integer and n_bins >= 1."""
    if scores.dim() != 2 or scores.shape[0] == 0:
        raise ValueError(f"expected an (N, K) tensor with N >= 1, got shape {tuple(scores.shape)}")
    if y.shape != (scores.shape[0],) or y.is_floating_point():
        raise ValueError(f"expected ({scores.shape[0]},) integer labels, got {tuple(y.shape)} {y.dtype}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")


def _bin_index(conf: Tensor, n_bins: int) -> Tensor:
    """Bin of each confidence over equal-width bins (lower, upper] of [0, 1]; 0 falls in the first."""
    inner = torch.linspace(0.0, 1.0, n_bins + 1, dtype=conf.dtype, device=conf.device)[1:-1]
    return torch.bucketize(conf, inner, right=False)


def _bins(probs: Tensor, y: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin example count, summed top-label confidence and number correct (float64)."""
    conf, pred = probs.max(dim=1)
    idx = _bin_index(conf, n_bins)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=probs.device)
    count = zeros.index_add(0, idx, torch.ones_like(conf))
    conf_sum = zeros.index_add(0, idx, conf)
    correct = zeros.index_add(0, idx, (pred == y).to(torch.float64))
    return count, conf_sum, correct


def _calibration(probs: Tensor, y: Tensor, n_bins: int) -> dict[str, float]:
    """Accuracy, ECE and Brier score of float64 probabilities."""
    n = probs.shape[0]
    count, conf_sum, correct = _bins(probs, y, n_bins)
    # sum_b |B|/N * |acc_b - conf_b| = sum_b |correct_b - conf_sum_b| / N (empty bins add 0)
    ece = (correct - conf_sum).abs().sum() / n
    # multi-class Brier (Brier 1950): squared distance to the one-hot label summed over classes, in [0, 2]
    onehot = F.one_hot(y, probs.shape[1]).to(torch.float64)
    brier = (probs - onehot).pow(2).sum(dim=1).mean()
    return {"acc": float(correct.sum() / n), "ece": float(ece), "brier": float(brier)}


def probs_metrics(probs: Tensor, y: Tensor, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL (true-class probability floored at PROB_FLOOR), top-label ECE, Brier of (N, K) probs."""
    _check(probs, y, n_bins)
    p = probs.detach().to(torch.float64)
    true_p = p.gather(1, y.long().unsqueeze(1)).squeeze(1)
    nll = -true_p.clamp_min(PROB_FLOOR).log().mean()
    return {**_calibration(p, y.long(), n_bins), "nll": float(nll)}


def logits_metrics(logits: Tensor, y: Tensor, n_bins: int = 15) -> dict[str, float]:
    """probs_metrics of softmax(logits), with the exact NLL from log_softmax (no floor needed)."""
    _check(logits, y, n_bins)
    log_p = F.log_softmax(logits.detach().to(torch.float64), dim=1)
    nll = -log_p.gather(1, y.long().unsqueeze(1)).mean()
    return {**_calibration(log_p.exp(), y.long(), n_bins), "nll": float(nll)}


def reliability(probs: Tensor, y: Tensor, n_bins: int = 15) -> dict[str, list]:
    """Per-bin edges, mean confidence, accuracy and count for a reliability diagram (None for empty bins)."""
    _check(probs, y, n_bins)
    count, conf_sum, correct = _bins(probs.detach().to(torch.float64), y.long(), n_bins)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64).tolist()
    counts = [int(c) for c in count.tolist()]
    # None rather than NaN for empty bins: JSON-safe, and plotly leaves a gap for None
    confidence = [s / c if c else None for s, c in zip(conf_sum.tolist(), counts)]
    accuracy = [k / c if c else None for k, c in zip(correct.tolist(), counts)]
    return {"bin_lower": edges[:-1], "bin_upper": edges[1:], "confidence": confidence,
            "accuracy": accuracy, "count": counts}


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean, sample std (ddof=1) and count; std is 0.0 for a single value, where it is undefined."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    mean = math.fsum(values) / n
    # 0.0 rather than NaN at n == 1 so a table shows "x +- 0" for a single seed instead of breaking
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def gain_recovery(acc_kd: float, acc_scratch: float, acc_ensemble: float) -> float | None:
    """(kd - scratch) / (ensemble - scratch); None when the ensemble is not better than scratch."""
    gain = acc_ensemble - acc_scratch
    # no gain to recover (or a negative one): the ratio is undefined or meaningless, not 0 or inf
    if gain <= 1e-9:
        return None
    return (acc_kd - acc_scratch) / gain


def gain_recovery_over_seeds(kd_accs: list[float], scratch_accs: list[float], acc_ensemble: float) -> dict:
    """Recovery per seed, paired by index (kd_accs[i] and scratch_accs[i] share seed i), with its spread.

    Returns {"per_seed": [recovery_i or None], "mean", "std", "n" (over the defined recoveries; mean and
    std None when none is), "of_means": recovery of mean(kd) over mean(scratch)}. Pairing by seed
    removes the noise that a student's KD and scratch runs share through their seed.
    """
    if len(kd_accs) != len(scratch_accs) or not kd_accs:
        raise ValueError(f"need one scratch accuracy per KD accuracy (same seeds), got {len(kd_accs)} KD "
                         f"and {len(scratch_accs)} scratch")
    per_seed = [gain_recovery(kd, sc, acc_ensemble) for kd, sc in zip(kd_accs, scratch_accs)]
    defined = [r for r in per_seed if r is not None]
    spread = mean_std(defined) if defined else {"mean": None, "std": None, "n": 0}
    of_means = gain_recovery(mean_std(kd_accs)["mean"], mean_std(scratch_accs)["mean"], acc_ensemble)
    return {"per_seed": per_seed, **spread, "of_means": of_means}
