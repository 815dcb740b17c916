"""Models: any timm architecture sized for a data set, with optional width/depth multipliers.

Public surface: `ModelSpec`, `build_model`, `model_card`, `count_params`, `count_flops`, `list_models`.
"""

from core.models.catalog import list_models
from core.models.cost import count_flops, count_params
from core.models.factory import build_model, model_card, pretrained_status
from core.models.spec import ModelSpec

__all__ = ["ModelSpec", "build_model", "count_flops", "count_params", "list_models", "model_card",
           "pretrained_status"]
