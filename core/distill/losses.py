"""Distillation losses by name: `@register_kd_loss("name")` fills the registry, `kd_loss` runs one.

The target is the ensemble's probabilities at T = 1 by default, since a combiner may average
probabilities or stack, so there may be no logits to divide by T. At temperature T a probability
target is softened as p^(1/T) renormalised, which equals softmax(z / T) whenever p = softmax(z):
softmax(z)^(1/T) = exp(z/T) / (sum_j exp(z_j))^(1/T), and the second factor cancels on renormalising.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from core.errors import ConfigError
from core.registry import Registry

# Floor for target log-probabilities: a probability that underflowed to 0 gives log 0 = -inf, and
# -inf * 0 is NaN inside a KL. exp(-1e4) is 0 in every float format, so the floor changes nothing else.
LOG_FLOOR = -1e4

# fn(student_logits (N, K), target log-probs at T (N, K), labels (N,) or None, T, weights (N,) or None,
# **kw) -> {"kd": scalar, extras...}. The KD term is already T^2-scaled and batch-reduced.
KdFn = Callable[..., dict[str, Tensor]]
_LOSSES: Registry[KdFn] = Registry("distillation loss", "distill.loss", ConfigError)


def register_kd_loss(name: str) -> Callable[[KdFn], KdFn]:
    """Decorator: make a KD term available as distill.loss = `name`."""
    return _LOSSES.decorator(name)


def list_kd_losses() -> list[str]:
    """Registered distillation loss names, in registration order (the default first)."""
    return _LOSSES.names()


_get = _LOSSES.get


def kd_loss_doc(name: str) -> str:
    """The docstring (with the formula) of loss `name`, for the dashboard."""
    return inspect.getdoc(_get(name)) or ""


def soften(target: Tensor, T: float, target_kind: Literal["probs", "logits"] = "probs") -> Tensor:
    """Log-probabilities of the target at temperature T: log_softmax(log p / T) or log_softmax(z / T).

    For probabilities this is log of p^(1/T) / sum_j p_j^(1/T), equal to log_softmax(z / T) when
    p = softmax(z).
    """
    t = target.detach()
    if t.dtype != torch.float64:  # half-precision caches are upcast; float64 stays for exact tests
        t = t.float()
    if target_kind == "probs":
        t = t.log()
    elif target_kind != "logits":
        raise ValueError(f"target_kind must be 'probs' or 'logits', not {target_kind!r}")
    return (t / T).log_softmax(dim=-1).clamp_min(LOG_FLOOR)


def batch_mean(per_example: Tensor, weights: Tensor | None) -> Tensor:
    """Mean over the batch, or the weighted mean sum_n w_n l_n / sum_n w_n (weights are relative)."""
    if weights is None:
        return per_example.mean()
    w = weights.to(per_example)
    return (w * per_example).sum() / w.sum()


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) per row, summed over the last dim; 0 * log 0 counts as 0."""
    p = log_p.exp()
    return (p * (log_p - log_q)).sum(dim=-1)


def _as_float(x: object) -> float:
    try:
        return float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _check(T: float, alpha: float) -> None:
    if not (math.isfinite(_as_float(T)) and _as_float(T) > 0):
        raise ConfigError("distill.temperature", f"temperature must be > 0, got {T}",
                          "use e.g. distill.temperature=4")
    if not 0.0 <= _as_float(alpha) <= 1.0:
        raise ConfigError("distill.alpha", f"alpha must be in [0, 1], got {alpha}",
                          "use e.g. distill.alpha=0.9 (1 = distillation only, 0 = labels only)")


def kd_loss(name: str, student_logits: Tensor, target: Tensor, labels: Tensor | None, T: float,
            alpha: float, *, target_kind: Literal["probs", "logits"] = "probs",
            weights: Tensor | None = None, mask: Tensor | None = None, **kw) -> dict[str, Tensor]:
    """Distillation loss `name`: {"loss": alpha * kd + (1 - alpha) * ce, "kd", "ce", extras...}.

    `target` is the ensemble's (N, K) probabilities at T = 1 (or logits, with target_kind="logits");
    `weights` (N,) re-weight examples (residual re-weighting) as a weighted batch mean.
    `mask` (N,) bool marks the examples that have a teacher target (distill.teacher_budget); `target`
    then holds those rows only, (mask.sum(), K). See `masked_kd`.
    """
    fn = _get(name)
    _check(T, alpha)
    T, alpha = float(T), float(alpha)
    if mask is None:
        _check_shapes(student_logits, target)
    if labels is None and alpha < 1.0:
        raise ConfigError("distill.alpha", f"alpha = {alpha} < 1 needs hard labels, and none were given",
                          "pass the labels or set distill.alpha=1")
    # Losses in fp32 even under autocast: KL of near-equal distributions loses everything in bf16.
    zs = student_logits if student_logits.dtype == torch.float64 else student_logits.float()
    if mask is not None:
        out = masked_kd(fn, zs, target, labels, T, weights, mask, target_kind, **kw)
    else:
        out = fn(zs, soften(target, T, target_kind).to(zs.dtype), labels, T, weights, **kw)
    if labels is None:
        ce = zs.new_zeros(())
    else:
        ce = batch_mean(F.cross_entropy(zs, labels, reduction="none"), weights)
    return {"loss": alpha * out["kd"] + (1.0 - alpha) * ce, **out, "ce": ce}


def _check_shapes(student_logits: Tensor, target: Tensor) -> None:
    if student_logits.shape != target.shape:
        raise ConfigError("student.model", f"the student gives {tuple(student_logits.shape)} logits but "
                          f"the ensemble target is {tuple(target.shape)}",
                          "build the student with the data set's num_classes")


def masked_kd(fn: KdFn, zs: Tensor, target: Tensor, labels: Tensor | None, T: float, weights: Tensor | None,
              mask: Tensor, target_kind: Literal["probs", "logits"] = "probs", **kw) -> dict[str, Tensor]:
    """The KD term when only the `mask` rows of the batch have a teacher target (`target`: those rows).

    The term is computed on those rows and scaled by their (weighted) share of the batch, so that
    for a per-example loss (hinton, dkd) it equals sum_{n in mask} w_n kd_n / sum_n w_n: each example
    keeps its unbudgeted per-example weight, and one without a target adds only its CE term
    (alpha * 0 + (1 - alpha) * ce_n). DIST's intra-class correlation is taken over the masked rows.
    A batch with no masked row has a KD term of 0 (no teacher output to learn from).
    """
    zq = zs[mask]
    if zq.shape[0] == 0:  # 0 tied to the graph, so that alpha = 1 still back-propagates (a zero gradient)
        return {"kd": (zs * 0.0).sum()}
    _check_shapes(zq, target)
    wq = None if weights is None else weights[mask]
    out = fn(zq, soften(target, T, target_kind).to(zs.dtype), None if labels is None else labels[mask], T, wq, **kw)
    share = (wq.sum() / weights.sum()) if weights is not None else mask.to(zs.dtype).mean()
    return {key: value * share.to(value.dtype) for key, value in out.items()}


@register_kd_loss("hinton")
def hinton(zs: Tensor, log_pt: Tensor, labels: Tensor | None, T: float,
           weights: Tensor | None) -> dict[str, Tensor]:
    """Hinton et al. 2015 (arXiv:1503.02531): KL at temperature T, scaled by T^2.

        kd    = T^2 * (1/N) sum_n KL( p_t^T(x_n) || softmax(z_s(x_n) / T) )     ("batchmean")
        total = alpha * kd + (1 - alpha) * CE(z_s, y)

    KL sums over classes and averages over examples; reduction="mean" would also divide by K.
    T^2 keeps the soft-target gradients on one scale as T changes.
    """
    per = kl_rows(log_pt, (zs / T).log_softmax(dim=-1))
    return {"kd": T * T * batch_mean(per, weights)}


def _binary_log(log_p: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """(log p_gt, log (1 - p_gt)) per row, the second as a logsumexp over non-target classes (stable)."""
    log_gt = log_p.gather(1, gt[:, None]).squeeze(1)
    log_rest = log_p.masked_fill(F.one_hot(gt, log_p.shape[1]).bool(), float("-inf")).logsumexp(dim=1)
    return log_gt, log_rest


def dkd_parts(log_ps: Tensor, log_pt: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example (TCKD, NCKD) of Zhao et al. 2022, unscaled, from student and target log-probs.

        TCKD = KL( [p_t,gt, 1 - p_t,gt] || [p_s,gt, 1 - p_s,gt] )
        NCKD = KL( p_t,\\gt / (1 - p_t,gt) || p_s,\\gt / (1 - p_s,gt) )    over the K - 1 non-target classes
        KL(p_t || p_s) = TCKD + (1 - p_t,gt) * NCKD                       (exact)
    """
    gt_mask = F.one_hot(labels, log_ps.shape[1]).bool()
    t_gt, t_rest = _binary_log(log_pt, labels)
    s_gt, s_rest = _binary_log(log_ps, labels)
    tckd = kl_rows(torch.stack([t_gt, t_rest], 1), torch.stack([s_gt, s_rest], 1))
    # Non-target distributions: drop the target class and renormalise. The target entry is set to
    # 0 in both log tensors (its probability is 0) so that 0 * (-inf) never appears.
    lt = (log_pt - t_rest[:, None]).masked_fill(gt_mask, 0.0)
    ls = (log_ps - s_rest[:, None]).masked_fill(gt_mask, 0.0)
    nckd = (lt.exp().masked_fill(gt_mask, 0.0) * (lt - ls)).sum(dim=1)
    return tckd, nckd


@register_kd_loss("dkd")
def dkd(zs: Tensor, log_pt: Tensor, labels: Tensor | None, T: float, weights: Tensor | None,
        dkd_alpha: float = 1.0, dkd_beta: float = 8.0) -> dict[str, Tensor]:
    """Decoupled KD, Zhao et al. CVPR 2022: target-class and non-target-class KD weighted apart.

        TCKD = KL( b_t || b_s ),  b = [p_gt, 1 - p_gt]                      binary target vs rest
        NCKD = KL( p̂_t || p̂_s ),  p̂ = p over the K - 1 non-target classes, renormalised
        kd    = T^2 * (1/N) sum_n ( dkd_alpha * TCKD + dkd_beta * NCKD ),   dkd_alpha = 1, dkd_beta = 8
        total = alpha * kd + (1 - alpha) * CE(z_s, y)

    All distributions at temperature T. Classic KD is TCKD + (1 - p_t,gt) * NCKD: the NCKD weight
    shrinks exactly when the teacher is confident, which DKD undoes with a fixed beta.
    """
    if labels is None:
        raise ConfigError("distill.loss", "dkd needs hard labels to split target and non-target classes",
                          "pass the labels or pick distill.loss=hinton")
    tckd, nckd = dkd_parts((zs / T).log_softmax(dim=-1), log_pt, labels)
    tckd, nckd = T * T * batch_mean(tckd, weights), T * T * batch_mean(nckd, weights)
    return {"kd": dkd_alpha * tckd + dkd_beta * nckd, "tckd": tckd, "nckd": nckd}


def pearson(a: Tensor, b: Tensor, dim: int, weights: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of a and b along `dim` (optionally weighted along it), eps-guarded."""
    shape = [1] * a.dim()
    shape[dim] = -1
    w = torch.ones(a.shape[dim], device=a.device, dtype=a.dtype) if weights is None else weights.to(a)
    w = (w / w.sum()).reshape(shape)
    da = a - (w * a).sum(dim, keepdim=True)
    db = b - (w * b).sum(dim, keepdim=True)
    cov = (w * da * db).sum(dim)
    return cov / ((w * da * da).sum(dim).sqrt() * (w * db * db).sum(dim).sqrt() + eps)


def dist_terms(ps: Tensor, pt: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(inter, intra) relation losses of DIST from (N, K) student and target probabilities, unscaled."""
    inter = batch_mean(1.0 - pearson(ps, pt, dim=1), weights)  # per example, over classes
    intra = (1.0 - pearson(ps, pt, dim=0, weights=weights)).mean()  # per class, over the batch
    return inter, intra


@register_kd_loss("dist")
def dist(zs: Tensor, log_pt: Tensor, labels: Tensor | None, T: float, weights: Tensor | None,
         dist_beta: float = 1.0, dist_gamma: float = 1.0) -> dict[str, Tensor]:
    """DIST, Huang et al. NeurIPS 2022: match relations (Pearson correlation), not exact probabilities.

        rho(u, v) = cov(u, v) / (std(u) std(v))
        inter = (1/N) sum_n (1 - rho( p_s(x_n), p_t(x_n) ))            over classes, per example
        intra = (1/K) sum_k (1 - rho( p_s[:, k], p_t[:, k] ))          over the batch, per class
        kd    = T^2 * (dist_beta * inter + dist_gamma * intra),   dist_beta = dist_gamma = 1
        total = alpha * kd + (1 - alpha) * CE(z_s, y)

    p = softmax(z / T). Pearson is invariant to a positive affine map of either argument, so the
    student need not match the teacher's scale or shift, only its ranking pattern. Example weights
    enter as a weighted mean (inter) and a weighted correlation over the batch (intra).
    """
    inter, intra = dist_terms((zs / T).softmax(dim=-1), log_pt.exp(), weights)
    inter, intra = T * T * inter, T * T * intra
    return {"kd": dist_beta * inter + dist_gamma * intra, "inter": inter, "intra": intra}
