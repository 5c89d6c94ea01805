"""CKU's default regularizer: token-level KL(p_original || p_current) on useful data."""

import torch

from cku_core.losses import ReferenceTokens, token_kl_to
from cku_core.objectives import register_regularizer


@register_regularizer("kl_ref", needs_reference=True)
def kl_ref(logits: torch.Tensor, labels: torch.Tensor, reference: ReferenceTokens) -> torch.Tensor:
    return token_kl_to(reference, logits, labels)
