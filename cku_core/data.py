"""Prompt/response examples -> token batches whose labels cover the response tokens only.

The prompt is rendered with the model's own chat template (a user turn plus the generation
prompt), so training, scoring and evaluation all see the exact text the model sees at inference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from cku_core.errors import DataError

IGNORE_INDEX = -100
# Used only when a tokenizer has no chat template (e.g. base GPT-2): documented, deterministic.
FALLBACK_TEMPLATE = "### User:\n{prompt}\n### Assistant:\n"


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """The prompt as the model sees it before its answer (chat template + generation prompt)."""
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return (f"{system}\n" if system else "") + FALLBACK_TEMPLATE.format(prompt=prompt)


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels (prompt positions = IGNORE_INDEX) for one example, at most `max_length` long.

    A long prompt is cut from the left and a long response from the right, keeping at least half
    of the budget for the response, because the response is what the losses are computed on.
    """
    if not example.prompt.strip() or not example.response.strip():
        raise DataError(
            f"an example has an empty {'prompt' if not example.prompt.strip() else 'response'}; "
            "remove empty rows from the data set"
        )
    prompt_ids = tokenizer(render_prompt(tokenizer, example.prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    room_for_prompt = max(max_length - len(response_ids), max_length // 2)
    prompt_ids = prompt_ids[-room_for_prompt:]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return {
        "input_ids": prompt_ids + response_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids,
    }


def encode_examples(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int) -> list[dict]:
    return [encode_example(tokenizer, ex, max_length) for ex in examples]


def collate(encoded: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples into input_ids / attention_mask / labels tensors."""
    width = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def iter_batches(encoded: Sequence[dict], batch_size: int, pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches in the given order (callers shuffle with their own seeded generator)."""
    for start in range(0, len(encoded), batch_size):
        yield collate(encoded[start:start + batch_size], pad_token_id)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise DataError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token before encoding")


def examples_digest(examples: Sequence[Example]) -> str:
    """sha256 of the examples' canonical JSON: the data digest used in cache keys and provenance."""
    payload = json.dumps([[e.prompt, e.response] for e in examples], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
