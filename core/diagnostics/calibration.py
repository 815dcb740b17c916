"""Reliability diagram data and ECE for any (N, K) probabilities, from core.evaluate's binning."""

from __future__ import annotations

import torch
from torch import Tensor

from core.evaluate import _bin_index, reliability


def calibration(probs: Tensor, y: Tensor, n_bins: int = 15) -> dict:
    """Reliability bins (bin_lower, bin_upper, confidence, accuracy, count; None for empty bins) and ece."""
    bins = reliability(probs, y, n_bins)
    # ECE = sum_b |B_b|/N * |acc_b - conf_b|, from the same bins (empty bins add 0)
    ece = sum(c * abs(a - f) for a, f, c in zip(bins["accuracy"], bins["confidence"], bins["count"]) if c)
    return {**bins, "ece": ece / sum(bins["count"])}


def pooled_calibration(probs: Tensor, y: Tensor, n_bins: int = 15) -> dict:
    """calibration() of B prediction sets pooled into one: probs (B, N, K), y (N,).

    The B sets (a member's draws, a student's seeds) are concatenated into one (B * N, K) set with y
    repeated B times, so the bins count B * N predictions and the ECE is the pooled set's ECE, not
    the mean of the B per-set ECEs (the two agree when B = 1).
    """
    return calibration(probs.flatten(0, 1), y.repeat(probs.shape[0]), n_bins)


def ece_many(probs: Tensor, y: Tensor, n_bins: int = 15) -> Tensor:
    """Top-label ECE of each of B prediction sets at once: probs (B, N, K), y (N,) -> (B,) float64.

    Same bins as core.evaluate (equal width, (lower, upper]); one scatter for all B sets instead of
    B separate calls, since diagnose scores every member draw and every student seed.
    """
    b, n, _ = probs.shape
    conf, pred = probs.to(torch.float64).max(dim=-1)  # (B, N)
    slot = (torch.arange(b).unsqueeze(1) * n_bins + _bin_index(conf, n_bins)).flatten()
    zeros = torch.zeros(b * n_bins, dtype=torch.float64)
    # sum_bin |correct_bin - conf_sum_bin| / N, as in core.evaluate (empty bins add 0)
    gap = zeros.index_add(0, slot, (pred == y.to(pred.device)).to(torch.float64).flatten() - conf.flatten())
    return gap.view(b, n_bins).abs().sum(dim=1) / n
