"""activation: s_j = mean over samples of mean over response tokens |a_j| (forward only; cheapest)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cku_core.adapters import MLPAdapter
from cku_core.scoring import LayerScores, ProgressFn, register_scorer
from cku_core.scoring._common import as_btd, hooks, masked_example_mean, on_device, prediction_mask


@register_scorer("activation")
def activation(model: nn.Module, adapter: MLPAdapter, layers: Sequence[int],
               batches: Sequence[dict[str, torch.Tensor]], *, seed: int,
               on_batch: ProgressFn | None = None) -> LayerScores:
    totals = {layer: torch.zeros(adapter.d_ff, dtype=torch.float64) for layer in layers}
    state: dict[str, torch.Tensor] = {}
    # The last selected layer is the deepest one we need: stop the forward pass there.
    deepest = max(layers)

    class _Stop(Exception):
        pass

    def capture(layer: int):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            a = as_btd(args[0], state["batch"]).float().abs()
            totals[layer] += masked_example_mean(a, state["mask"]).sum(0).double().cpu()
            if layer == deepest:
                raise _Stop
        return pre_hook

    n_examples = 0
    handles = [adapter.down_proj(layer).register_forward_pre_hook(capture(layer)) for layer in layers]
    with hooks(handles), torch.inference_mode():
        for i, batch in enumerate(batches):
            batch = on_device(model, batch)
            state["batch"], state["mask"] = batch, prediction_mask(batch["labels"])
            try:
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            except _Stop:
                pass
            n_examples += batch["input_ids"].shape[0]
            if on_batch:
                on_batch(i + 1, len(batches))
    return {layer: (t / max(n_examples, 1)).float() for layer, t in totals.items()}
