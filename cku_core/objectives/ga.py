"""Plain gradient ascent: maximise the NLL of the harmful responses, without bound."""

import torch

from cku_core.objectives import ForgetOutputs, register_objective


@register_objective("ga")
def ga(out: ForgetOutputs, **_: float) -> torch.Tensor:
    return -out.nll_mean.mean()
