"""snip: unit-aggregated |W * dL/dW| over every parameter slice of unit j (biases included).

The gradient is accumulated over all scoring samples before taking |W * G| (connection
sensitivity of the whole identification set), with only the selected MLPs' weights requiring grad.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cku_core.adapters import MLPAdapter
from cku_core.scoring import LayerScores, ProgressFn, register_scorer
from cku_core.scoring._common import example_loss, on_device, requires_grad_only


@register_scorer("snip")
def snip(model: nn.Module, adapter: MLPAdapter, layers: Sequence[int],
         batches: Sequence[dict[str, torch.Tensor]], *, seed: int,
         on_batch: ProgressFn | None = None) -> LayerScores:
    unit_params = {layer: adapter.unit_params(layer) for layer in layers}
    params = [up.param for ups in unit_params.values() for up in ups]
    with requires_grad_only(model, params):
        n_examples = 0
        for i, batch in enumerate(batches):
            batch = on_device(model, batch)
            example_loss(model, batch).backward()
            n_examples += batch["input_ids"].shape[0]
            if on_batch:
                on_batch(i + 1, len(batches))
        with torch.no_grad():
            scores = {
                layer: sum(up.per_unit((up.param * up.param.grad / max(n_examples, 1)).float().abs().cpu())
                           for up in ups)
                for layer, ups in unit_params.items()
            }
    return scores
