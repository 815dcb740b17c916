"""Small deterministic optimisers shared by the combiners that fit on the val split."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

# LBFGS iterations cap: the val problems here have at most a few thousand parameters and converge
# in tens of iterations; the cap keeps the worst case well under a second on 2 CPU cores.
MAX_ITER = 300


@contextlib.contextmanager
def fitting_mode() -> Iterator[None]:
    """Gradients on, even when the caller runs under no_grad or inference_mode."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def val_on_cpu(t: Tensor) -> Tensor:
    """A float64 CPU copy usable by autograd: fits are tiny, and float64 keeps LBFGS deterministic
    and free of precision stalls on every device (MPS has no float64). Call inside fitting_mode()
    so that the copy is not an inference tensor."""
    return t.detach().to("cpu", torch.float64).clone()


def lbfgs(params: list[Tensor], loss_fn: Callable[[], Tensor], max_iter: int = MAX_ITER) -> tuple[float, int]:
    """Minimise `loss_fn` over `params` in place with full-batch LBFGS; returns (final loss, iterations)."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        final = float(loss_fn())
    return final, int(opt.state[params[0]].get("n_iter", 0))


def nll(log_probs_or_logits: Tensor, y: Tensor) -> float:
    """Mean negative log-likelihood (nats per example) of (N, K) logits against labels."""
    return float(F.cross_entropy(log_probs_or_logits.double(), y.to(log_probs_or_logits.device)))
