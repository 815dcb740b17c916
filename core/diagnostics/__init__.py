"""Ensemble diagnostics from cached logits: bias, variance, diversity, error correlation, calibration.

    diag = diagnose(member_logits, y, member_names=names, val_logits=val, val_y=val_y,
                    students={"kd": kd_logits, "scratch": scratch_logits})   # JSON-ready dict
    frames = to_frames(diag)                                                 # tidy pandas frames

member_logits is (M members, D draws, N examples, K classes): draws are independent training seeds
(or bootstrap resamples) of each member. Every decomposition is exact (Wood et al. 2023,
notes/bias-variance-diversity.md): loss = bias + variance - diversity, expected over draws, for
cross-entropy under the logit average (mean_logit), Brier under the probability average
(mean_prob) and the 0/1 loss under majority vote (vote, as effects). Bias and variance need D >= 2;
with D = 1 only the single-run form loss = member_loss - diversity is given, with a `reason`.
Pure functions: no training, computed in float64 on the CPU.
"""

from core.diagnostics.brier import brier_terms
from core.diagnostics.calibration import calibration, ece_many, pooled_calibration
from core.diagnostics.crossentropy import cross_entropy_terms
from core.diagnostics.decompose import decompose
from core.diagnostics.frames import per_example_frame, to_frames
from core.diagnostics.growth import diversity_growth, member_nll, order_by_val_nll
from core.diagnostics.inputs import as_draws, group_member_major
from core.diagnostics.pairwise import disagreement, error_correlation
from core.diagnostics.report import diagnose
from core.diagnostics.students import student_terms
from core.diagnostics.terms import TERMS, Decomposition
from core.diagnostics.zero_one import zero_one_terms

__all__ = ["TERMS", "Decomposition", "as_draws", "brier_terms", "calibration", "cross_entropy_terms",
           "decompose", "diagnose", "disagreement", "diversity_growth", "ece_many", "error_correlation",
           "group_member_major", "member_nll", "order_by_val_nll", "per_example_frame", "pooled_calibration",
           "student_terms", "to_frames", "zero_one_terms"]
