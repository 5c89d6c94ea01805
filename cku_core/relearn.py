"""Relearning attack: how fast does removed knowledge come back under a little fine-tuning?

Unlearning that only hides knowledge is undone by a few steps of fine-tuning, even on data that is
not the held-out target (Lynch et al. 2024, arXiv:2402.16835; Hu et al. 2024, arXiv:2406.13356).
The attack here: fine-tune the unlearned model with plain cross-entropy on `n_examples` prompt/
response pairs, either forget examples (harmful answers of the original model to *other* prompts
than the held-out ones) or benign ones, for k steps, and measure after each k in `steps` (and at
k = 0) the held-out harmful NLL (the knowledge judge on the original's answers to the held-out
prompts) and the ASR of a small attack subset. One cumulative run snapshots at each k, so k = 20
continues from k = 10. Run it on CKU, on GA and on the original model (the ceiling) to compare.

Pure library (no Prefect): `relearn_curve` takes the measurement as a callback; `evaluation_measure`
builds the standard one from `evaluate_model` with a reduced EvalConfig (`relearn_eval_config`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from transformers import PreTrainedTokenizerBase

from cku_core.adapters import MLPAdapter
from cku_core.config import StageConfig
from cku_core.data import Example, collate, encode_examples, pad_id
from cku_core.device import autocast, resolve_device, to_device
from cku_core.errors import DataError
from cku_core.eval.config import EvalConfig, known_attacks
from cku_core.eval.data import EvalData
from cku_core.eval.reference import ReferenceOutputs
from cku_core.losses import sequence_nll
from cku_core.unlearn import batch_schedule, trainable_parameters


class RelearnConfig(StageConfig):
    """The relearning attack: fine-tuning budget, data and the small evaluation after each k."""

    steps: list[int] = Field([5, 10, 20], description=(
        "Fine-tuning steps k after which the model is measured (one cumulative run; k = 0 is always measured too)."))
    lr: float = Field(5e-5, gt=0, description="AdamW learning rate of the attacker's fine-tuning.")
    batch_size: int = Field(4, ge=1, description="Examples per fine-tuning step.")
    n_examples: int = Field(8, ge=1, description="Distinct examples the attacker fine-tunes on (cycled over the steps).")
    data: Literal["forget", "benign"] = Field("forget", description=(
        "forget: harmful pairs from the forget split (the original model's answers; never the held-out prompts); "
        "benign: useful pairs from the scoring split (does unrelated fine-tuning also bring it back?)."))
    seed: int = Field(0, description="Seed of the example choice and batch order.")
    scope: Literal["full", "all_mlp"] = Field("full", description=(
        "Parameters the attacker trains: the whole model (default: white-box access) or every MLP."))
    max_length: int = Field(256, ge=8, description="Token budget per prompt+response during fine-tuning.")
    attacks: list[str] = Field(["direct", "prefill_sure"], description=(
        "Attacks whose ASR is measured after each k (a small subset keeps the curve cheap)."))
    n_attack_prompts: int = Field(5, ge=0, description="Held-out harmful prompts attacked after each k (0 = NLL only).")
    max_new_tokens: int = Field(32, ge=1, description="Generated tokens per response in those attacks.")

    @field_validator("steps")
    @classmethod
    def _sorted_positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"steps must be positive step counts, e.g. [5, 10, 20]; got {v}")
        return sorted(set(v))

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, names: list[str]) -> list[str]:
        return known_attacks(names)


Measure = Callable[[nn.Module], list[dict[str, Any]]]  # model -> metric rows (MetricRow.as_dict())
# Throughput rows of evaluate_model: about the machine, not the model, so not part of a curve.
_THROUGHPUT = frozenset({"tokens_per_s", "generated_tokens", "generation_seconds"})


@dataclass(frozen=True)
class CurvePoint:
    step: int                 # fine-tuning steps done (0 = the model before the attack)
    train_loss: float | None  # mean CE of the steps since the previous point (None at k = 0)
    seconds: float            # fine-tuning seconds so far (measurement excluded)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # MetricRow dicts of the measurement

    def value(self, metric: str, judge: str | None = None, attack: str | None = None,
              family: str | None = None) -> float | None:
        """The first matching number (None = any), e.g. value("asr", "refusal_keyword", "all", "all")."""
        wanted = {"judge": judge, "attack": attack, "family": family}
        for m in self.metrics:
            if m["metric"] == metric and all(v is None or m[k] == v for k, v in wanted.items()):
                return m["value"]
        return None


@dataclass
class RelearnCurve:
    points: list[CurvePoint]
    n_examples: int
    n_trainable: int

    def as_dict(self) -> dict:
        return asdict(self)


def relearn_eval_config(evaluation: EvalConfig, config: RelearnConfig) -> EvalConfig:
    """The pipeline's evaluation cut down to what a curve point needs: a few attacked prompts, the
    response judges (no LLM judge: it would need a second model), the knowledge NLL, no utility."""
    attacks = config.attacks if config.n_attack_prompts else []
    return EvalConfig.model_validate({
        **evaluation.model_dump(), "attacks": attacks, "n_eval_prompts": max(config.n_attack_prompts, 1),
        "max_new_tokens": config.max_new_tokens, "utility": [],
        "judges": [j for j in evaluation.judges if j != "llm"]})


def evaluation_measure(tokenizer: PreTrainedTokenizerBase, data: EvalData, reference: ReferenceOutputs,
                       config: EvalConfig) -> Measure:
    """A Measure that runs `evaluate_model` (ASR per judge and attack, knowledge NLL) on the model."""
    from cku_core.eval.runner import (
        evaluate_model,  # the runner imports every judge; only needed here
    )

    def measure(model: nn.Module) -> list[dict[str, Any]]:
        result = evaluate_model(model, tokenizer, data, config, reference=reference)
        return [m for m in result.metric_dicts() if m["metric"] not in _THROUGHPUT]
    return measure


def choose_examples(pool: Sequence[Example], config: RelearnConfig) -> list[Example]:
    """`n_examples` of the pool, seeded (the same choice for every model compared)."""
    if not pool:
        raise DataError(f"the relearning attack has no {config.data} examples to fine-tune on")
    order = list(range(len(pool)))
    random.Random(config.seed).shuffle(order)
    return [pool[i] for i in order[: config.n_examples]]


def relearn_curve(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
                  config: RelearnConfig, measure: Measure, device: str = "auto",
                  on_point: Callable[[CurvePoint], None] | None = None) -> RelearnCurve:
    """Fine-tune `model` in place on `examples` and `measure` it at k = 0 and after each k in config.steps."""
    dev = resolve_device(device)
    model.to(dev)
    trainable = trainable_parameters(model, MLPAdapter(model), [], "full" if config.scope == "full" else "all_mlp")
    for p in model.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, weight_decay=0.0)
    encoded = encode_examples(tokenizer, examples, config.max_length)
    plan = batch_schedule(len(encoded), config.batch_size, config.steps[-1], config.seed)
    points = [_point(model, measure, 0, None, 0.0, on_point)]
    losses: list[float] = []
    seconds = 0.0
    for step, batch_idx in enumerate(plan, start=1):
        t0 = time.perf_counter()
        losses.append(_train_step(model, trainable, optimizer, collate([encoded[i] for i in batch_idx],
                                                                        pad_id(tokenizer)), dev))
        seconds += time.perf_counter() - t0
        if step in config.steps:
            points.append(_point(model, measure, step, sum(losses) / len(losses), seconds, on_point))
            losses = []
    return RelearnCurve(points, len(examples), sum(p.numel() for p in trainable.values()))


def _train_step(model: nn.Module, trainable: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
                batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """One plain cross-entropy step on the response tokens (what an attacker's fine-tuning does)."""
    for p in trainable.values():
        p.requires_grad_(True)
    model.train()  # as a fine-tuning attacker would; the measurement switches back to eval mode
    try:
        batch = to_device(batch, device)
        with autocast(device):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = sequence_nll(logits, batch["labels"])[0].mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    finally:
        model.eval()
        for p in trainable.values():
            p.requires_grad_(False)
    return float(loss.detach())


def _point(model: nn.Module, measure: Measure, step: int, loss: float | None, seconds: float,
           on_point: Callable[[CurvePoint], None] | None) -> CurvePoint:
    model.eval()
    with torch.no_grad():
        point = CurvePoint(step, loss, round(seconds, 3), measure(model))
    if on_point:
        on_point(point)
    return point
