"""Per-example Bradley-Terry fit to the teachers' pairwise class preferences, inverse-variance weighted."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ensemble.fitting import nll
from core.ensemble.registry import Combined, register_combiner

logger = logging.getLogger(__name__)

# THE CUT. The pairwise step holds M k^2 float64 numbers per example, in a few temporaries, and
# each solver step a k x k system. All of CIFAR-100 (K = 100, M = 3) would be 3 * 100^2 * 8 B =
# 240 kB per example (12 GB for a 50,000-image train split) and 10^4 pairs per solver step. So only
# the TOP_K classes with the highest best-member probability max_m p_mi enter the pairwise fit
# (3 * 32^2 * 8 B = 24.6 kB per example); the other classes keep the mean-logit ensemble's
# probability, and the selected ones share the mean-logit mass of the selected set in proportion
# to their strengths. Max |Δp| against the full fit on 100-class logits whose log-probabilities
# fall off 0.5 nats per rank plus N(0, 1) member noise (tests/test_bradley_terry.py): 1.3e-3 at
# 16 classes, 1.2e-4 at 24, 2e-6 at 32; at 0.3 nats per rank (flat teachers) 8.5e-3, 1.8e-3 and
# 2.8e-4. 32 keeps every profile tried under 1e-3, at ~1.7x the time of 24. K <= TOP_K: no cut.
TOP_K = 32
# Examples per chunk: one (M, B, k, k) float64 temporary holds about 2^21 numbers = 16 MB.
CHUNK_NUMBERS = 1 << 21
# Concentrations tried on val: c = 0 (flat Beta posteriors: equal weights) then 0.1 .. 1e4 at two
# points per decade, half the uncertainty scheme's density: each point is a full BT fit of val.
CONCENTRATION_GRID: tuple[float, ...] = (0.0,) + tuple(10.0 ** (e / 2) for e in range(-2, 9))
# Converged when every class's strength moves by < TOL relative, i.e. |Δ log s| < 1e-7, between
# steps, counted in absolute terms below S_SCALE (|Δ s| < 1e-13): the log-strength of a class with
# s ~ 1e-13 is only pinned to ~1e-3 by float64 likelihoods (its curvature is ~1e-13).
TOL = 1e-7
S_SCALE = 1e-6
MAX_ITER = 100  # Newton from uniform strengths gains ~1 nat per step on the far classes: <= ~35 steps
HALVINGS = 8    # step halvings tried before a failed Newton step falls back to an MM step
# Member log-probabilities are raised to at least -30 nats (p >= 9.4e-14): that moves each
# probability by < 1e-13, far below every tolerance, keeps log p finite (no log 0, no 0 / 0), and
# bounds log-strength gaps by ~30 + log K nats, so the Newton systems (curvature >= ~e^-30 against
# O(1)) stay solvable in float64 (condition <~ 1e14 < 1 / eps).
LOGP_FLOOR = -30.0


def pairwise_consensus(lp: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """(M, B, k) member log-probs -> (consensus P (B, k, k) with P_ii = 0, mean member weights (B, M)).

    q_mij = sigmoid(log p_mi - log p_mj) = p_mi / (p_mi + p_mj), from log-probs so that two tiny
    probabilities never give 0 / 0. Beta(c q + 1, c (1 - q) + 1) has variance a b / ((c + 2)^2 (c + 3))
    and a b = 1 + c + c^2 q (1 - q); the denominator is shared by all teachers, so the normalised
    inverse-variance weight is w_mij ∝ 1 / (1 + c + c^2 q_mij (1 - q_mij)), symmetric in i, j.
    """
    m, _, k = lp.shape
    pref = torch.sigmoid(lp.unsqueeze(-1) - lp.unsqueeze(-2))  # (M, B, k, k)
    w = (pref * (1.0 - pref)).mul_(c * c).add_(1.0 + c).reciprocal_()  # in (0, 1]: no overflow
    inv_total = w.sum(dim=0).reciprocal_()  # (B, k, k)
    consensus = (w * pref).sum(dim=0).mul_(inv_total)
    consensus.diagonal(dim1=-2, dim2=-1).zero_()
    if k < 2:
        return consensus, lp.new_full((lp.shape[1], m), 1.0 / m)
    # Each member's weight averaged over the k (k - 1) ordered pairs i != j; rows sum to 1.
    inv_total.diagonal(dim1=-2, dim2=-1).zero_()
    return consensus, torch.einsum("mbij,bij->bm", w, inv_total) / (k * (k - 1))


def _log_likelihood(consensus: Tensor, x: Tensor) -> Tensor:
    """(B,) sum_{i != j} P_ij log sigmoid(x_i - x_j) at log-strengths x (B, k) (P_ii = 0)."""
    return (consensus * F.logsigmoid(x.unsqueeze(-1) - x.unsqueeze(-2))).sum(dim=(-1, -2))


def _newton_direction(wins: Tensor, x: Tensor) -> Tensor:
    """Newton step on the log-likelihood in log-strengths, class 0 held fixed (the gauge).

    Class 0 should be a strong class (the caller sorts by soft wins): pinning a far, weakly
    compared class would leave the rest nearly free and the system nearly singular.
    """
    sig = torch.sigmoid(x.unsqueeze(-1) - x.unsqueeze(-2))  # s_i / (s_i + s_j); 1/2 on the diagonal
    grad = wins - (sig.sum(dim=-1) - 0.5)  # uses n_ij = P_ij + P_ji = 1
    lap = sig.mul_(1.0 - sig)  # s_i s_j / (s_i + s_j)^2, as sig_ji = 1 - sig_ij; 1/4 on the diagonal
    curv = lap.sum(dim=-1) - 0.25
    # Minus the Hessian is the Laplacian with these weights; without class 0's row and column it
    # is positive definite (every pair is compared).
    hess = lap[:, 1:, 1:].neg()
    hess.diagonal(dim1=-2, dim2=-1).copy_(curv[:, 1:])
    chol, info = torch.linalg.cholesky_ex(hess)
    step = torch.cholesky_solve(grad[:, 1:].unsqueeze(-1), chol).squeeze(-1)
    step = torch.where((info == 0).unsqueeze(-1), step, torch.zeros_like(step))
    return F.pad(step, (1, 0))


def _normalised(x: Tensor) -> Tensor:
    return x - x.logsumexp(dim=-1, keepdim=True)


def _mm_step(wins: Tensor, x: Tensor) -> Tensor:
    """One MM (Zermelo) step in log-strengths: s_i <- sum_j P_ij / sum_{j != i} 1 / (s_i + s_j)."""
    s = x.exp()
    inv = (s.unsqueeze(-1) + s.unsqueeze(-2)).reciprocal_()
    inv.diagonal(dim1=-2, dim2=-1).zero_()  # masked, not subtracted: 1 / (2 s_i) can dwarf the sum
    return _normalised(wins.log() - inv.sum(dim=-1).log())


def fit_strengths(consensus: Tensor, tol: float = TOL, max_iter: int = MAX_ITER) -> tuple[Tensor, int]:
    """BT strengths (B, k), rows summing to 1, maximising L(s) = sum_{i != j} P_ij log(s_i / (s_i + s_j)).

    From uniform strengths, Newton steps on L in log s with step halving; where no halving raises L,
    one MM (Zermelo; Hunter 2004) step s_i <- sum_j P_ij / sum_{j != i} 1 / (s_i + s_j), which always
    does. Plain MM is the textbook iteration but its rate tends to 1 for near-certain preferences (on
    peaked 10-class logits, after 2,000 MM steps s was still 3e-3 from the fixed point that Newton
    reaches in 12); both have that fixed point (L is concave in log s, strictly up to scale: every
    pair is compared). Converged examples leave the batch. Returns (s, steps of the slowest example).
    """
    b, k = consensus.shape[:2]
    out = consensus.new_full((b, k), 1.0 / k)
    if b == 0:
        return out, 0
    # Classes sorted by soft wins, so that class 0 (pinned by the Newton step) is a strong one.
    order = consensus.sum(dim=-1).argsort(dim=-1, descending=True)
    sorted_p = consensus.gather(1, order.unsqueeze(-1).expand(-1, -1, k))
    sorted_p = sorted_p.gather(2, order.unsqueeze(1).expand(-1, k, -1))
    wins = sorted_p.sum(dim=-1)  # soft wins, >= (k - 1) sigmoid(-30 - log K) > 0
    active = torch.arange(b, device=consensus.device)
    finished = torch.zeros(b, dtype=torch.bool, device=consensus.device)
    x = out.log()
    like = _log_likelihood(sorted_p, x)
    for it in range(1, max_iter + 1):
        step = _newton_direction(wins, x)
        new_x, new_like, ok, scale = x, like, torch.zeros_like(finished), 1.0
        for _ in range(HALVINGS + 1):  # accept rises (and rounding-level falls) of L, per example
            trial = _normalised(x + scale * step)
            trial_like = _log_likelihood(sorted_p, trial)
            good = ~ok & torch.isfinite(trial_like) & (trial_like >= like - 1e-13 * like.abs())
            new_x = torch.where(good.unsqueeze(-1), trial, new_x)
            new_like = torch.where(good, trial_like, new_like)
            ok |= good
            if bool(ok.all()):
                break
            scale /= 2
        if not bool(ok.all()):
            mm = _mm_step(wins, x)
            new_x = torch.where(ok.unsqueeze(-1), new_x, mm)
            new_like = torch.where(ok, new_like, _log_likelihood(sorted_p, mm))
        s_new = new_x.exp()
        finished |= ((s_new - x.exp()).abs() <= tol * s_new.clamp_min(S_SCALE)).all(dim=-1)
        out[active] = s_new
        x, like = new_x, new_like
        if bool(finished.all()):
            return torch.empty_like(out).scatter_(1, order, out), it
        if int(finished.sum()) * 4 >= len(finished):  # drop converged examples once they are a quarter
            keep = ~finished
            active, sorted_p, wins, x, like = active[keep], sorted_p[keep], wins[keep], x[keep], like[keep]
            finished = finished[keep]
    logger.warning("bradley_terry: %d of %d examples had not converged after %d Newton steps (tolerance "
                   "%.0e relative per strength)", int((~finished).sum()), b, max_iter, tol)
    return torch.empty_like(out).scatter_(1, order, out), max_iter


def _combine_chunk(lp: Tensor, c: float, top_k: int) -> tuple[Tensor, Tensor, int]:
    """(M, B, K) floored float64 log-probs -> (probs (B, K), member weights (B, M), solver steps)."""
    m, _, k = lp.shape
    if k <= top_k:
        consensus, weights = pairwise_consensus(lp, c)
        s, steps = fit_strengths(consensus)
        return s, weights, steps
    # Best-member probability decides which classes enter: any class one teacher finds likely.
    idx = lp.amax(dim=0).topk(top_k, dim=-1).indices  # (B, top_k)
    consensus, weights = pairwise_consensus(lp.gather(-1, idx.expand(m, -1, -1)), c)
    s, steps = fit_strengths(consensus)
    mean_logit = lp.mean(dim=0).softmax(dim=-1)
    probs = mean_logit.scatter(-1, idx, s * mean_logit.gather(-1, idx).sum(dim=-1, keepdim=True))
    return probs, weights, steps


def bradley_terry_fit(z: Tensor, c: float, top_k: int = TOP_K) -> tuple[Tensor, Tensor, int]:
    """Member logits (M, N, K) -> (probs (N, K), weights (N, M), max solver steps), float64.

    Computed on z's device in chunks of examples (MPS has no float64: there on the CPU).
    """
    m, n, k = z.shape
    work = torch.device("cpu") if z.device.type == "mps" else z.device
    lp = z.to(work, torch.float64).log_softmax(dim=-1).clamp_min(LOGP_FLOOR)
    kk = min(k, top_k)
    chunk = max(1, CHUNK_NUMBERS // (m * kk * kk))
    probs, weights, steps = [lp.new_zeros(0, k)], [lp.new_zeros(0, m)], 0
    for start in range(0, n, chunk):
        p, w, it = _combine_chunk(lp[:, start:start + chunk], c, top_k)
        probs.append(p)
        weights.append(w)
        steps = max(steps, it)
    return torch.cat(probs), torch.cat(weights), steps


def bradley_terry_probs(z: Tensor, c: float, top_k: int = TOP_K) -> Tensor:
    """Ensemble probabilities (N, K) float32, on z's device, for member logits (M, N, K) at concentration c."""
    return bradley_terry_fit(z, c, top_k)[0].to(z.device, torch.float32)


@register_combiner("bradley_terry", fits_on_val=True)
def bradley_terry(logits: dict[str, Tensor], val_labels: Tensor | None) -> Combined:
    """Per-example Bradley-Terry strengths fitted to the teachers' inverse-variance weighted pairwise votes.

        q_mij = p_mi / (p_mi + p_mj)                 teacher m's preference for class i over j
        a, b  = c q_mij + 1,  c (1 - q_mij) + 1       its Beta(a, b) posterior (flat prior + c counts)
        v_mij = a b / ((a + b)^2 (a + b + 1)),   w_mij = (1 / v_mij) / sum_l (1 / v_lij)
        P_ij  = sum_m w_mij q_mij                    weighted consensus, P_ij + P_ji = 1
        s     = argmax_{s > 0, sum s = 1}  sum_{i != j} P_ij log( s_i / (s_i + s_j) )
        p(x)  = s                                     (fitted per example x)

    The fixed point satisfies sum_{j != i} P_ij = sum_{j != i} s_i / (s_i + s_j) for every class i
    (Zermelo / MM, Hunter 2004); it is solved by safeguarded Newton steps from uniform s to a
    relative change < 1e-7 per strength. Limiting cases: one teacher gives back its own
    distribution (q_ij is already a BT preference with strengths p), teachers that agree give
    their common distribution, c = 0 (or equal posterior variances on every pair) gives the
    unweighted BT fit of the mean preference, and relabelling the classes permutes the output the
    same way. Large c makes near-certain judgments (q near 0 or 1) count most.

    One concentration c for all teachers, chosen on val from c = 0 and 0.1 .. 1e4 (two per decade)
    by minimal ensemble NLL (ties go to the smaller c). With K > 32 classes only the 32 classes with
    the highest best-member probability max_m p_mi are fitted; the rest keep the mean-logit
    ensemble's probability and the 32 share the rest of its mass (TOP_K in the module). Member
    log-probabilities are floored at -30 nats. Weights: each teacher's w_mij averaged over the
    pairs (rows sum to 1).
    """
    z_val = logits["val"]
    grid_nll = [nll(bradley_terry_fit(z_val, c)[0].log(), val_labels) for c in CONCENTRATION_GRID]
    best = min(range(len(grid_nll)), key=lambda j: (grid_nll[j], j))
    c = CONCENTRATION_GRID[best]
    probs, weights, steps = {}, {}, 0
    for split, z in logits.items():
        p, w, it = bradley_terry_fit(z, c)
        probs[split], weights[split] = p.to(z.device, torch.float32), w.to(z.device, torch.float32)
        steps = max(steps, it)
    return Combined(probs=probs, weights=weights, predict=lambda z: bradley_terry_probs(z, c),
                    info={"concentration": c, "val_nll": grid_nll[best], "val_nll_uniform": grid_nll[0],
                          "top_k": min(TOP_K, z_val.shape[-1]), "solver_steps": steps,
                          "grid_concentration": list(CONCENTRATION_GRID), "grid_val_nll": grid_nll})
