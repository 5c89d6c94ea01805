"""Hinge gradient ascent (CKU default; reconstruction): push a harmful response's NLL up to lambda, then stop."""

import torch

from cku_core.objectives import ForgetOutputs, register_objective


@register_objective("hinge_ga")
def hinge_ga(out: ForgetOutputs, *, hinge_lambda: float, **_: float) -> torch.Tensor:
    # Per example: once its NLL passes lambda the term is 0 and so is its gradient.
    return torch.relu(hinge_lambda - out.nll_mean).mean()
