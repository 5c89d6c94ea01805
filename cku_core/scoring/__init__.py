"""Neuron scoring on useful data, behind a registry.

Every scorer returns one float32 tensor of shape [d_ff] per selected layer; a higher score means
the unit matters more for useful knowledge, so the top fraction is locked. Only response tokens
count: prompt positions are masked out of every statistic.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from cku_core.adapters import MLPAdapter, default_layers
from cku_core.config import ScoringConfig
from cku_core.data import Example, encode_examples, iter_batches, pad_id
from cku_core.errors import ConfigError

LayerScores = dict[int, torch.Tensor]
ProgressFn = Callable[[int, int], None]


class Scorer(Protocol):
    def __call__(self, model: nn.Module, adapter: MLPAdapter, layers: Sequence[int],
                 batches: Sequence[dict[str, torch.Tensor]], *, seed: int,
                 on_batch: ProgressFn | None = None) -> LayerScores: ...


SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    def wrap(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn
    return wrap


def resolve_layers(adapter: MLPAdapter, layers: Sequence[int] | None) -> list[int]:
    """The selected layers, validated: sorted, unique, inside the model."""
    if layers is None:
        return default_layers(adapter.num_layers)
    chosen = sorted(set(layers))
    if not chosen:
        raise ConfigError("the layer band is empty; give at least one layer index or leave layers unset for the default band")
    bad = [layer for layer in chosen if not 0 <= layer < adapter.num_layers]
    if bad:
        raise ConfigError(
            f"layer indices {bad} are out of range for a {adapter.num_layers}-layer model; use 0..{adapter.num_layers - 1}"
        )
    return chosen


def select_samples(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """N_id samples drawn with the localization seed (all of them when fewer exist)."""
    if len(examples) <= n:
        return list(examples)
    return random.Random(seed).sample(list(examples), n)


def score_neurons(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
                  config: ScoringConfig, on_batch: ProgressFn | None = None) -> LayerScores:
    """Score the units of the selected layers on useful prompt/response pairs."""
    if config.scorer not in SCORERS:
        raise ConfigError(f"unknown scorer '{config.scorer}'; choose one of: {', '.join(sorted(SCORERS))}")
    adapter = MLPAdapter(model)
    layers = resolve_layers(adapter, config.layers)
    samples = select_samples(examples, config.n_samples, config.seed)
    encoded = encode_examples(tokenizer, samples, config.max_length)
    batches = list(iter_batches(encoded, config.batch_size, pad_id(tokenizer)))
    was_training = model.training
    model.eval()
    try:
        return SCORERS[config.scorer](model, adapter, layers, batches, seed=config.seed, on_batch=on_batch)
    finally:
        model.train(was_training)


from cku_core.scoring import activation, grad_x_act, random_scores, snip, wanda  # noqa: E402,F401
