"""A student's own bias and variance over its training seeds (one member, S draws).

Run for the distilled and the scratch student with the same seeds, the variance terms show whether
distillation makes the student's predictions depend less on its seed.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from torch import Tensor

from core.diagnostics.decompose import decompose_checked
from core.diagnostics.inputs import as_labels, as_seeds, log_probs
from core.diagnostics.terms import STUDENT_FIX, Decomposition, draws_reason


def student_terms(student_logits: Tensor | Sequence[Tensor], y: Tensor) -> dict[str, Decomposition]:
    """Cross-entropy, Brier and 0/1 decompositions of (S, N, K) student logits, as M = 1 with D = S.

    With one member the diversity is 0 and member_loss = loss = bias + variance. With S = 1 bias and
    variance are absent and `reason` says why.
    """
    z = as_seeds(student_logits)  # (1, S, N, K)
    y = as_labels(y, z.shape[2], z.shape[3])
    reason = draws_reason(z.shape[1], "student", STUDENT_FIX)
    decomps = decompose_checked(log_probs(z), z.argmax(dim=-1), y)
    return {c: dataclasses.replace(d, reason=reason) for c, d in decomps.items()}
