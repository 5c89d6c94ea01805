"""random: a control with the same U size; uniform scores from the localization seed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cku_core.adapters import MLPAdapter
from cku_core.scoring import LayerScores, ProgressFn, register_scorer


@register_scorer("random")
def random_scores(model: nn.Module, adapter: MLPAdapter, layers: Sequence[int],
                  batches: Sequence[dict[str, torch.Tensor]], *, seed: int,
                  on_batch: ProgressFn | None = None) -> LayerScores:
    generator = torch.Generator().manual_seed(seed)
    return {layer: torch.rand(adapter.d_ff, generator=generator) for layer in sorted(layers)}
