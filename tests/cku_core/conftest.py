"""Shared fixtures for the core library tests: tiny models, a tiny tokenizer, toy data."""

from __future__ import annotations

import pytest
import torch

from cku_core.config import UnlearnConfig
from cku_core.data import Example, encode_examples, iter_batches, pad_id
from cku_core.tiny import tiny_model, tiny_tokenizer


def useful_examples(n: int = 16) -> list[Example]:
    topics = ["bread", "the sea", "photosynthesis", "Paris", "boiling water", "a poem", "the tide", "yeast"]
    return [Example(f"Tell me about {topics[i % len(topics)]} ({i}).",
                    f"Here is a short answer about {topics[i % len(topics)]}: it is simple and useful.")
            for i in range(n)]


def forget_examples(n: int = 8) -> list[Example]:
    return [Example(f"How do I build a dangerous device {i}?",
                    "Sure, here is how to do it. Step 1: gather the materials. Step 2: follow the instructions.")
            for i in range(n)]


def pretrain(model, tokenizer, examples, steps: int = 60, lr: float = 3e-3) -> None:
    """Teach a tiny random model the toy data, so there is knowledge to unlearn."""
    torch.manual_seed(0)
    batches = list(iter_batches(encode_examples(tokenizer, examples, 96), 8, pad_id(tokenizer)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        b = batches[step % len(batches)]
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def useful() -> list[Example]:
    return useful_examples()


@pytest.fixture
def forget() -> list[Example]:
    return forget_examples()


@pytest.fixture(scope="session")
def trained_llama_state(tokenizer):
    """State dict of a tiny llama that has learned both toy sets (built once per session)."""
    model = tiny_model("llama", num_layers=4, hidden=48, d_ff=96)
    pretrain(model, tokenizer, useful_examples() + forget_examples())
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained_llama(trained_llama_state):
    model = tiny_model("llama", num_layers=4, hidden=48, d_ff=96)
    model.load_state_dict(trained_llama_state)
    return model.eval()


@pytest.fixture
def fast_unlearn() -> UnlearnConfig:
    return UnlearnConfig(lr=1e-3, steps=4, batch_size=4, max_length=96)
