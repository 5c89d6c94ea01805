"""Token-level quantities shared by scorers, objectives and evaluation (response tokens only)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ReferenceTokens:
    """The original model's next-token distribution at the response positions, reduced to what
    KL(p_ref || p) needs: probabilities [N, V] and the constant sum of p log p. Keeping these instead
    of the reference logits and log-probs cuts the regularizer's extra memory to one [N, V] tensor."""

    probs: torch.Tensor
    sum_p_log_p: torch.Tensor
    n_tokens: int


@torch.no_grad()
def reference_tokens(ref_logits: torch.Tensor, labels: torch.Tensor) -> ReferenceTokens:
    ref_logits, _, mask = shift(ref_logits, labels)
    logp = F.log_softmax(ref_logits[mask].float(), -1)
    probs = logp.exp()
    return ReferenceTokens(probs, (probs * logp).sum(), int(mask.sum()))


def token_kl_to(reference: ReferenceTokens, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over response tokens of KL(p_ref || p) = sum p_ref log p_ref - sum p_ref log p."""
    _, _, mask = shift(logits, labels)
    logp = F.log_softmax(logits[:, :-1][mask].float(), -1)
    return (reference.sum_p_log_p - (reference.probs * logp).sum()) / max(reference.n_tokens, 1)


def token_kl(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over response tokens of KL(p_ref || p) over the full vocabulary."""
    return token_kl_to(reference_tokens(ref_logits, labels), logits, labels)
