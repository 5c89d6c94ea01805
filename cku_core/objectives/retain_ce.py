"""GradDiff's retain term: plain cross-entropy on useful data."""

import torch

from cku_core.losses import sequence_nll
from cku_core.objectives import register_regularizer


@register_regularizer("retain_ce")
def retain_ce(logits: torch.Tensor, labels: torch.Tensor, reference: None = None) -> torch.Tensor:
    nll_mean, _ = sequence_nll(logits, labels)
    return nll_mean.mean()
