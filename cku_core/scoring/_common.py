"""Helpers shared by the scorers: response-position masks, hooks, per-example losses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cku_core.data import IGNORE_INDEX
from cku_core.device import to_device
from cku_core.losses import sequence_nll


def prediction_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] float mask of the positions that predict a response token (where the loss lives)."""
    mask = torch.zeros_like(labels, dtype=torch.float32)
    mask[:, :-1] = (labels[:, 1:] != IGNORE_INDEX).float()
    return mask


def masked_example_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values [B, T, D], mask [B, T] -> [B, D]: mean over each example's response positions."""
    summed = (values * mask.unsqueeze(-1)).sum(1)
    return summed / mask.sum(1, keepdim=True).clamp_min(1)


def example_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over examples of each example's mean response NLL: batch-size independent gradients."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll_mean, _ = sequence_nll(logits, batch["labels"])
    return nll_mean.sum()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def on_device(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return to_device(batch, model_device(model))


@contextlib.contextmanager
def requires_grad_only(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Temporarily make exactly `params` trainable (none if empty); restore flags and grads after."""
    saved = {p: p.requires_grad for p in model.parameters()}
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    try:
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None


@contextlib.contextmanager
def hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def as_btd(t: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Some models (OPT) flatten tokens before the MLP: view activations as [B, T, d_ff]."""
    b, s = batch["input_ids"].shape
    return t.reshape(b, s, -1)
