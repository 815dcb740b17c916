"""Distillation: losses by name (`kd_loss`, `@register_kd_loss`) over an ensemble probability target."""

from core.distill.losses import (dist_terms, dkd_parts, kd_loss, kd_loss_doc, list_kd_losses, pearson,
                                 register_kd_loss, soften)

__all__ = ["dist_terms", "dkd_parts", "kd_loss", "kd_loss_doc", "list_kd_losses", "pearson",
           "register_kd_loss", "soften"]
