"""Teacher-forced log-likelihoods: the one forward-only primitive behind perplexity, MC accuracy,
the knowledge judge, the LLM judge's digit scores and KL against a reference model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cku_core.data import Example, encode_example, pad_id

T = TypeVar("T")


def right_pad(seqs: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: positions before the padding are computed exactly as without it (causal mask)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))  # similar lengths waste less padding
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def map_continuations(
    model: PreTrainedModel, pairs: Sequence[tuple[list[int], list[int]]], pad_token_id: int,
    fn: Callable[[torch.Tensor, torch.Tensor], T], batch_size: int = 8,
) -> list[T]:
    """For each (context ids, continuation ids): fn(log-probs [n_cont, vocab], continuation ids [n_cont]).

    The log-probs are those that predict each continuation token; `fn` reduces them at once so the
    full-vocabulary tensors of a whole data set never sit in memory together.
    """
    device = next(model.parameters()).device
    out: list[T | None] = [None] * len(pairs)
    seqs = [list(c) + list(x) for c, x in pairs]
    for batch in _batches([len(s) for s in seqs], batch_size):
        ids, mask = right_pad([seqs[i] for i in batch], pad_token_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, i in enumerate(batch):
            n_ctx, n_cont = len(pairs[i][0]), len(pairs[i][1])
            logp = F.log_softmax(logits[row, n_ctx - 1:n_ctx + n_cont - 1].float(), -1).cpu()  # t predicts t+1
            out[i] = fn(logp, torch.tensor(pairs[i][1], dtype=torch.long))
    return out  # type: ignore[return-value]


def continuation_logprobs(
    model: PreTrainedModel, pairs: Sequence[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 8,
) -> list[torch.Tensor]:
    """For each (context ids, continuation ids): log p of each continuation token (a 1-D float tensor)."""
    return map_continuations(model, pairs, pad_token_id, lambda lp, tgt: lp.gather(1, tgt[:, None])[:, 0], batch_size)


def example_pairs(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int,
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) exactly as training encodes them (chat template, eos after the response)."""
    pairs = []
    for ex in examples:
        enc = encode_example(tokenizer, ex, max_length)
        n_prompt = sum(1 for label in enc["labels"] if label == -100)
        pairs.append((enc["input_ids"][:n_prompt], enc["input_ids"][n_prompt:]))
    return pairs


def response_nll(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
    max_length: int = 512, batch_size: int = 8,
) -> list[tuple[float, int]]:
    """(summed NLL, number of response tokens) per example, response tokens only."""
    logps = continuation_logprobs(model, example_pairs(tokenizer, examples, max_length), pad_id(tokenizer), batch_size)
    return [(float(-lp.sum()), int(lp.numel())) for lp in logps]
