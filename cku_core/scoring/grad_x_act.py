"""grad_x_act (default): s_j = mean over samples of mean over response tokens |a_j * dL/da_j|.

a_j is the input of the down projection. No weight gradients are needed: all parameters are
frozen and the lowest selected layer's activation is made a leaf, so the backward pass stops
there and computes activation gradients only (cheaper than a training step).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cku_core.adapters import MLPAdapter
from cku_core.scoring import LayerScores, ProgressFn, register_scorer
from cku_core.scoring._common import (
    as_btd, example_loss, hooks, masked_example_mean, on_device, prediction_mask, requires_grad_only,
)


@register_scorer("grad_x_act")
def grad_x_act(model: nn.Module, adapter: MLPAdapter, layers: Sequence[int],
               batches: Sequence[dict[str, torch.Tensor]], *, seed: int,
               on_batch: ProgressFn | None = None) -> LayerScores:
    totals = {layer: torch.zeros(adapter.d_ff, dtype=torch.float64) for layer in layers}
    n_examples = 0
    lowest = min(layers)
    state: dict[str, torch.Tensor] = {}

    def capture(layer: int):
        def pre_hook(module: nn.Module, args: tuple):
            a = args[0]
            if layer == lowest:
                a = a.detach().requires_grad_(True)
            batch, mask = state["batch"], state["mask"]

            def on_grad(g: torch.Tensor) -> None:
                contrib = (as_btd(a, batch).float() * as_btd(g, batch).float()).abs()
                totals[layer] += masked_example_mean(contrib, mask).sum(0).double().cpu()

            a.register_hook(on_grad)
            return (a, *args[1:])
        return pre_hook

    handles = [adapter.down_proj(layer).register_forward_pre_hook(capture(layer)) for layer in layers]
    with hooks(handles), requires_grad_only(model, []):
        for i, batch in enumerate(batches):
            batch = on_device(model, batch)
            state["batch"], state["mask"] = batch, prediction_mask(batch["labels"])
            example_loss(model, batch).backward()
            n_examples += batch["input_ids"].shape[0]
            if on_batch:
                on_batch(i + 1, len(batches))
    return {layer: (t / max(n_examples, 1)).float() for layer, t in totals.items()}
