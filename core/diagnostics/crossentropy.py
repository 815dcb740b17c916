"""Cross-entropy under the logit-average combiner: bias, variance and diversity (Wood et al. 2023).

With q_id = softmax(z_id) for member i and draw d, the ensemble of draw d is the normalised
geometric mean q̄_d ∝ exp(mean_i log q_id) = softmax of the mean logit, and

    E_d l(y, q̄_d) = mean_i l(y, q_i*)                 bias      (q_i* ∝ exp(E_d log q_id))
                  + mean_i E_d KL(q_i* || q_id)       variance
                  - E_d mean_i KL(q̄_d || q_id)        diversity (>= 0)

exactly, where l(y, q) = -log q_y in nats (notes/bias-variance-diversity.md). The single-run form
l(y, q̄_d) = mean_i l(y, q_id) - mean_i KL(q̄_d || q_id) holds for every draw on its own. The
ensemble form E_d l(y, q̄_d) = l(y, q̄*) + E_d KL(q̄* || q̄_d), with q̄* the geometric mean over
members and draws, is reported as ensemble_bias and ensemble_variance.
"""

from __future__ import annotations

from torch import Tensor

from core.diagnostics.inputs import as_draws, as_labels, log_probs
from core.diagnostics.terms import Decomposition, draws_reason


def true_class(log_p: Tensor, y: Tensor) -> Tensor:
    """log p_y for every leading index: log_p (..., N, K), y (N,) -> (..., N)."""
    return log_p.gather(-1, y.expand(*log_p.shape[:-1]).unsqueeze(-1)).squeeze(-1)


# Every KL term here compares a normalised geometric mean g ∝ exp(mean_j log q_j) with the q_j it
# averages. Then log g - mean_j log q_j = -logsumexp(mean_j log q_j) is the same for every class, so
#   mean_j KL(g || q_j) = sum_k g_k (log g_k - mean_j log q_jk) = -logsumexp_k(mean_j log q_jk)
# exactly (>= 0 by Jensen). One logsumexp over an averaged tensor replaces a KL per member and draw.


def member_parts(log_q: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Per-member terms of (M, D, N, K) log-probs: nll (M, D, N); bias, variance (M, N) when D >= 2."""
    nll = -true_class(log_q, y)
    out = {"nll": nll}
    if log_q.shape[1] >= 2:
        lse = log_q.mean(dim=1).logsumexp(dim=-1)  # (M, N); log q_i* = mean_d log q_id - lse
        out["bias"] = nll.mean(dim=1) + lse  # -log q_i*_y
        out["variance"] = -lse  # E_d KL(q_i* || q_id)
    return out


def combine_parts(parts: dict[str, Tensor], mean_log_q: Tensor, y: Tensor) -> Decomposition:
    """The decomposition from member_parts of M members and their mean log-probs (D, N, K) over members."""
    m, d = parts["nll"].shape[:2]
    lse = mean_log_q.logsumexp(dim=-1)  # (D, N); log q̄_d = mean_log_q - lse
    loss = lse - true_class(mean_log_q, y)  # (D, N): -log q̄_dy
    member_loss = parts["nll"].mean(dim=0)  # (D, N)
    diversity = -lse  # (D, N): mean_i KL(q̄_d || q_id)
    per_example = {"loss": loss.mean(0), "member_loss": member_loss.mean(0), "diversity": diversity.mean(0)}
    extra: tuple[str, ...] = ()
    if d >= 2:
        per_example["bias"] = parts["bias"].mean(0)
        per_example["variance"] = parts["variance"].mean(0)
        # q̄* ∝ exp(mean over members and draws of log q) is also the geometric mean of the q̄_d, so
        # E_d KL(q̄* || q̄_d) = E_d lse_d - lse* by the same argument.
        mean_all = mean_log_q.mean(dim=0)  # (N, K)
        lse_all = mean_all.logsumexp(dim=-1)
        per_example["ensemble_bias"] = lse_all - true_class(mean_all, y)
        per_example["ensemble_variance"] = lse.mean(dim=0) - lse_all
        extra = ("loss = ensemble_bias + ensemble_variance",)
    per_draw = {"loss": loss.mean(1), "member_loss": member_loss.mean(1), "diversity": diversity.mean(1)}
    return Decomposition("mean_logit", "cross_entropy", m, d, per_example, per_draw, draws_reason(d), extra)


def cross_entropy_from_log_probs(log_q: Tensor, y: Tensor) -> Decomposition:
    """cross_entropy_terms from checked float64 (M, D, N, K) log-probabilities and int64 labels."""
    return combine_parts(member_parts(log_q, y), log_q.mean(dim=0), y)


def cross_entropy_terms(member_logits: Tensor, y: Tensor) -> Decomposition:
    """Bias, variance, diversity of cross-entropy for (M, D, N, K) logits under the logit average."""
    z, _ = as_draws(member_logits)
    y = as_labels(y, z.shape[2], z.shape[3])
    return cross_entropy_from_log_probs(log_probs(z), y)
