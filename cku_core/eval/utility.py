"""Utility metrics that need no generation: perplexity and multiple-choice accuracy by log-likelihood."""

from __future__ import annotations

import math
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cku_core.data import Example, pad_id, render_prompt
from cku_core.eval.likelihood import continuation_logprobs, response_nll
from cku_core.eval.sources import DataRecord


def perplexity(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence[DataRecord],
               max_length: int = 512, batch_size: int = 8) -> tuple[float, int]:
    """exp(total NLL / total response tokens) over held-out benign prompt/response pairs, and the token count."""
    examples = [Example(r.prompt, r.response) for r in records if r.response]
    if not examples:
        return float("nan"), 0
    scores = response_nll(model, tokenizer, examples, max_length=max_length, batch_size=batch_size)
    tokens = sum(n for _, n in scores)
    return math.exp(sum(s for s, _ in scores) / max(tokens, 1)), tokens


def mc_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: Sequence[DataRecord],
                batch_size: int = 8) -> dict[str, float]:
    """Cloze-style accuracy: the chosen answer is the choice text with the highest log-likelihood
    after the question (in the chat template).

    `mc_acc` sums log-probs over the choice's tokens; `mc_acc_norm` divides by the choice's length in
    characters (lm-eval's acc_norm), which removes the bias toward short choices.
    """
    pairs = []
    for r in records:
        context = tokenizer(render_prompt(tokenizer, r.prompt), add_special_tokens=False)["input_ids"]
        for choice in r.choices or ():
            pairs.append((context, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    if not pairs:
        return {"mc_acc": float("nan"), "mc_acc_norm": float("nan"), "n": 0.0}
    logps = continuation_logprobs(model, pairs, pad_id(tokenizer), batch_size)
    hits = hits_norm = 0
    offset = 0
    for r in records:
        n_choices = len(r.choices or ())
        raw = [float(lp.sum()) for lp in logps[offset:offset + n_choices]]
        norm = [s / max(len(c), 1) for s, c in zip(raw, r.choices or ())]
        hits += int(max(range(n_choices), key=raw.__getitem__) == r.answer)
        hits_norm += int(max(range(n_choices), key=norm.__getitem__) == r.answer)
        offset += n_choices
    return {"mc_acc": hits / len(records), "mc_acc_norm": hits_norm / len(records), "n": float(len(records))}
