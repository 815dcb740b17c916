"""Ensemble combiners: member logits {split: (M, N, K)} -> ensemble probabilities, by a named scheme.

Schemes live in a registry (`@register_combiner("name")`); each scheme's docstring states its
formula (`combiner_doc`). Schemes that fit (learned, uncertainty, stacking, bradley_terry) use only the
val split.
"""

from core.ensemble.registry import (Combined, combine, combiner_doc, fits_on_val, list_combiners,
                                    register_combiner)
# Imported for their side effect: each module registers its schemes (default first).
from core.ensemble import averaging as _averaging  # noqa: F401  mean_prob, mean_logit, vote
from core.ensemble import learned as _learned  # noqa: F401  learned, stacking
from core.ensemble import uncertainty as _uncertainty  # noqa: F401  uncertainty
from core.ensemble import bradley_terry as _bradley_terry  # noqa: F401  bradley_terry
from core.ensemble.uncertainty import dirichlet_total_variance, uncertainty_weights

__all__ = ["Combined", "combine", "combiner_doc", "dirichlet_total_variance", "fits_on_val",
           "list_combiners", "register_combiner", "uncertainty_weights"]
