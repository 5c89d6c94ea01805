"""CKU's default regularizer: token-level KL(p_original || p_current) on useful data."""

import torch

from cku_core.losses import token_kl
from cku_core.objectives import register_regularizer


@register_regularizer("kl_ref", needs_reference=True)
def kl_ref(logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    return token_kl(ref_logits, logits, labels)
