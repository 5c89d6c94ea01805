"""Unlearning objectives and regularizers, one small file each, behind two registries.

The total loss of a step is `loss = harm + beta * reg` (see cku_core.unlearn). A forget objective
sees per-example NLLs of the harmful responses (and the original model's, if it asks for them);
a regularizer sees the logits on useful data (and the original model's next-token distribution
at the response positions, `cku_core.losses.ReferenceTokens`, if it asks for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForgetOutputs:
    nll_mean: torch.Tensor          # [B] mean per-token NLL of each harmful response
    nll_sum: torch.Tensor           # [B] summed NLL (sequence log-likelihood, negated)
    ref_nll_sum: torch.Tensor | None = None  # [B] the same under the original model


@dataclass(frozen=True)
class Objective:
    name: str
    fn: Callable[..., torch.Tensor]
    needs_reference: bool


OBJECTIVES: dict[str, Objective] = {}
REGULARIZERS: dict[str, Objective] = {}


def register_objective(name: str, *, needs_reference: bool = False):
    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        OBJECTIVES[name] = Objective(name, fn, needs_reference)
        return fn
    return wrap


def register_regularizer(name: str, *, needs_reference: bool = False):
    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        REGULARIZERS[name] = Objective(name, fn, needs_reference)
        return fn
    return wrap


# Importing the modules registers them.
from cku_core.objectives import ga, hinge_ga, kl_ref, npo, retain_ce  # noqa: E402,F401
