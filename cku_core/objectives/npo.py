"""Negative Preference Optimization (Zhang et al. 2024) against the original model.

L = -(2 / b) * log sigmoid(-b * (log p(y|x) - log p_ref(y|x))), with sequence log-likelihoods.
"""

import torch
import torch.nn.functional as F

from cku_core.objectives import ForgetOutputs, register_objective


@register_objective("npo", needs_reference=True)
def npo(out: ForgetOutputs, *, npo_beta: float, **_: float) -> torch.Tensor:
    log_ratio = out.ref_nll_sum - out.nll_sum          # log p(y|x) - log p_ref(y|x)
    return (-2.0 / npo_beta * F.logsigmoid(-npo_beta * log_ratio)).mean()
