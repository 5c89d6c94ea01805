"""wanda: unit-aggregated |W| * ||x||_2 over the weights attached to unit j.

For an input weight (gate/up/fc1 row j) x is the MLP input feature the weight reads; for an output
weight (down column j) x is the unit's own activation a_j. Norms are taken over all response
positions of all samples. Biases have no input and are not scored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cku_core.adapters import MLPAdapter
from cku_core.scoring import LayerScores, ProgressFn, register_scorer
from cku_core.scoring._common import as_btd, hooks, on_device, prediction_mask


@register_scorer("wanda")
def wanda(model: nn.Module, adapter: MLPAdapter, layers: Sequence[int],
          batches: Sequence[dict[str, torch.Tensor]], *, seed: int,
          on_batch: ProgressFn | None = None) -> LayerScores:
    sq_in: dict[int, torch.Tensor] = {}
    sq_act: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}

    def accumulate(store: dict[int, torch.Tensor], layer: int):
        def pre_hook(module: nn.Module, args: tuple) -> None:
            x = as_btd(args[0], state["batch"]).float()
            sq = (x.pow(2) * state["mask"].unsqueeze(-1)).sum((0, 1)).double().cpu()
            store[layer] = store.get(layer, 0) + sq
        return pre_hook

    handles = []
    for layer in layers:
        handles.append(adapter.in_projs(layer)[0].register_forward_pre_hook(accumulate(sq_in, layer)))
        handles.append(adapter.down_proj(layer).register_forward_pre_hook(accumulate(sq_act, layer)))
    with hooks(handles), torch.inference_mode():
        for i, batch in enumerate(batches):
            batch = on_device(model, batch)
            state["batch"], state["mask"] = batch, prediction_mask(batch["labels"])
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            if on_batch:
                on_batch(i + 1, len(batches))

    scores: LayerScores = {}
    with torch.no_grad():
        for layer in layers:
            norm_in, norm_act = sq_in[layer].sqrt().float(), sq_act[layer].sqrt().float()
            score = torch.zeros(adapter.d_ff)
            for up in adapter.unit_params(layer):
                w = up.param.detach().float().abs().cpu()
                if up.spec.role == "in":
                    feature_dim = 1 - up.spec.dim      # the axis of the MLP input features
                    shape = [1, 1]
                    shape[feature_dim] = -1
                    score += up.per_unit(w * norm_in.reshape(shape))
                elif up.spec.role == "out":
                    score += up.per_unit(w) * norm_act
            scores[layer] = score
    return scores
