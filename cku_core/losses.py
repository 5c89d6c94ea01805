"""Token-level quantities shared by scorers, objectives and evaluation (response tokens only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cku_core.data import IGNORE_INDEX


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align next-token logits with their labels; returns (logits, labels, mask) over positions 1..T."""
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    return logits, labels.clamp_min(0), mask


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token NLL [B, T-1] (0 where masked) and the response mask."""
    logits, labels, mask = shift(logits, labels)
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")
    return nll * mask, mask


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean per-token NLL [B], summed NLL [B]) over each example's response tokens."""
    nll, mask = token_nll(logits, labels)
    total = nll.sum(1)
    return total / mask.sum(1).clamp_min(1), total


def token_kl(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over response tokens of KL(p_ref || p) over the full vocabulary."""
    ref_logits, _, mask = shift(ref_logits, labels)
    logits = logits[:, :-1, :]
    ref_logp = F.log_softmax(ref_logits.float(), -1)
    logp = F.log_softmax(logits.float(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)
