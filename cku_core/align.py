"""Safety fine-tune (`align` stage): make a model that complies with harmful requests refuse them.

The method starts from an aligned model: one that refuses direct harmful requests but still holds
the harmful knowledge, so jailbreaks get it back out. A small instruct model such as
SmolLM2-135M-Instruct refuses almost nothing, so "lower ASR" after unlearning could only come from
broken output. This module builds that starting point with plain supervised fine-tuning on
response tokens only (reconstruction; the paper starts from Llama-2-chat's own RLHF alignment):

- harmful prompts of the `align_harmful` split, each answered with a refusal drawn (seeded) from a
  builtin set of varied refusals written for this project (`eval/builtin/refusals.jsonl`): many
  wordings, so the model learns to refuse rather than to repeat one sentence;
- benign prompts of the `align_benign` split answered by the model itself (greedy, before any
  update), so its benign behaviour is the target and is preserved, including on safe prompts that
  look unsafe (over-refusal).

Each step mixes both kinds at a fixed ratio; the loss is the mean over examples of the per-token
NLL of the response, so short refusals and long benign answers weigh alike.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cku_core.adapters import MLPAdapter
from cku_core.config import StageConfig
from cku_core.data import Example, IGNORE_INDEX, collate, encode_example, pad_id, render_prompt
from cku_core.device import autocast, to_device
from cku_core.errors import DataError
from cku_core.generation import GenSettings, ProgressFn, generate
from cku_core.losses import sequence_nll
from cku_core.scoring import resolve_layers
from cku_core.unlearn import batch_schedule, trainable_parameters

REFUSALS_FILE = Path(__file__).parent / "eval" / "builtin" / "refusals.jsonl"


class AlignConfig(StageConfig):
    """The safety fine-tune that turns the raw model into the aligned model the method starts from.

    The prompts come from the data splits `align_harmful` / `align_benign` (`data.n_align_harmful`,
    `data.n_align_benign`), which are disjoint from every other split.
    """

    enabled: bool = Field(False, description=(
        "Run the align stage: every later stage (reference, scoring, unlearning, evaluation) then starts from "
        "the aligned model. False = use the raw model as it is."))
    # Measured on SmolLM2-135M-Instruct (12 held-out prompts per attack, keyword judge): 10 steps at
    # 3e-5 refuse every direct request while prefill, many-shot and decoding attacks still get
    # through (0.92 / 0.92 / 0.67); 30 steps at 1e-4 also closed many template attacks and doubled
    # benign perplexity. Shallow on purpose: it is the paper's starting point, not a safety product.
    steps: int = Field(10, ge=1, description="Optimizer steps (each one a batch of refusal + benign examples).")
    lr: float = Field(3e-5, gt=0, description="AdamW learning rate (constant).")
    batch_size: int = Field(8, ge=1, description="Examples per step, refusal and benign together.")
    refusal_fraction: float = Field(0.5, ge=0, le=1, description=(
        "Share of each batch that is harmful prompt -> refusal; the rest is benign prompt -> the model's own answer. "
        "At least one of each when both kinds exist."))
    max_length: int = Field(128, ge=8, description="Token budget per prompt+response (longer answers are cut).")
    n_refusal_texts: int | None = Field(None, ge=1, description=(
        "How many of the builtin refusal texts to use (a seeded choice); None = all of them (about 50). "
        "Fewer texts = less varied refusals."))
    max_new_tokens: int = Field(48, ge=1, description="Length of the model's own greedy answers to the benign prompts.")
    gen_batch_size: int = Field(16, ge=1, description="Batch size of that generation.")
    scope: Literal["full", "all_mlp", "selected_mlp"] = Field("full", description=(
        "Trainable parameters: the whole model (default; a 135M model fine-tunes fully on a CPU), every MLP, "
        "or the MLPs of `layers`."))
    layers: list[int] | None = Field(None, description="Layers trained with scope selected_mlp (None = the default band).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm (None = off).")
    seed: int = Field(0, description="Seed of the refusal draw and the batch order.")


@dataclass(frozen=True)
class Refusal:
    id: str
    category: str
    text: str


@dataclass(frozen=True)
class AlignExample:
    """A training pair; `complete` = the response ended with eos (else no eos is taught after it)."""

    example: Example
    kind: Literal["refusal", "benign"]
    complete: bool = True
    source: str = ""  # refusal id, or "original_model" for the model's own answers


@dataclass(frozen=True)
class AlignStep:
    step: int
    total_steps: int
    loss: float
    refusal_nll: float   # mean per-token NLL of the refusal examples of the batch (nan if none)
    benign_nll: float    # same for the benign examples
    seconds: float


@dataclass
class AlignReport:
    steps: int
    seconds: float
    n_refusal_examples: int
    n_benign_examples: int
    n_trainable: int
    refusal_ids: list[str]
    history: list[AlignStep] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# --- data ----------------------------------------------------------------------------------------

def load_refusals(path: Path = REFUSALS_FILE) -> list[Refusal]:
    """The builtin refusal texts (id, category, text), in file order."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Refusal(r["id"], r["category"], r["text"]) for r in rows]


def refusal_pool(refusals: Sequence[Refusal], n: int | None, seed: int) -> list[Refusal]:
    """All refusals, or a seeded choice of `n` of them."""
    if n is None or n >= len(refusals):
        return list(refusals)
    return random.Random(f"{seed}:pool").sample(list(refusals), n)


def sample_refusals(n: int, pool: Sequence[Refusal], seed: int) -> list[Refusal]:
    """`n` refusals: seeded reshuffles of the whole pool, one after another, so every text is used
    once before any repeats (variety) and the draw depends only on (n, pool, seed)."""
    if not pool:
        raise DataError("the refusal pool is empty; the align stage needs at least one refusal text")
    rng = random.Random(f"{seed}:refusals")
    out: list[Refusal] = []
    while len(out) < n:
        block = list(pool)
        rng.shuffle(block)
        out += block
    return out[:n]


def refusal_examples(prompts: Sequence[str], config: AlignConfig, refusals: Sequence[Refusal] | None = None
                     ) -> list[AlignExample]:
    """Each harmful prompt paired with a refusal from the (seeded) pool."""
    pool = refusal_pool(refusals if refusals is not None else load_refusals(), config.n_refusal_texts, config.seed)
    drawn = sample_refusals(len(prompts), pool, config.seed)
    return [AlignExample(Example(p, r.text), "refusal", True, r.id) for p, r in zip(prompts, drawn)]


def benign_examples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                    config: AlignConfig, on_progress: ProgressFn | None = None) -> list[AlignExample]:
    """The model's own greedy answers to the benign prompts (call it before any update); empty ones are dropped."""
    settings = GenSettings(max_new_tokens=config.max_new_tokens)
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    outputs = generate(model, tokenizer, rendered, settings, config.gen_batch_size, on_progress).outputs
    return [AlignExample(Example(p, g.text.strip()), "benign", g.hit_eos, "original_model")
            for p, g in zip(prompts, outputs) if g.text.strip()]


def encode_align(tokenizer: PreTrainedTokenizerBase, ex: AlignExample, max_length: int) -> dict[str, list[int]]:
    """Token ids and response-only labels; an answer cut by max_new_tokens gets no eos (that would
    teach the model to stop mid-sentence)."""
    enc = encode_example(tokenizer, ex.example, max_length)
    eos = tokenizer.eos_token_id
    if not ex.complete and eos is not None and enc["input_ids"][-1] == eos and enc["labels"][-1] != IGNORE_INDEX:
        enc = {"input_ids": enc["input_ids"][:-1], "labels": enc["labels"][:-1]}
    return enc


# --- training ------------------------------------------------------------------------------------

StepFn = Callable[[AlignStep], None]


def batch_split(batch_size: int, fraction: float, n_refusal: int, n_benign: int) -> tuple[int, int]:
    """(refusal, benign) examples per batch; at least one of each kind that exists."""
    if not n_benign:
        return batch_size, 0
    if not n_refusal:
        return 0, batch_size
    k = min(max(round(batch_size * fraction), 1), batch_size - 1) if batch_size > 1 else 1
    return k, batch_size - k


def _kind_nll(per_example: torch.Tensor, n_refusal: int) -> tuple[float, float]:
    ref, ben = per_example[:n_refusal], per_example[n_refusal:]
    return (float(ref.mean()) if len(ref) else float("nan"), float(ben.mean()) if len(ben) else float("nan"))


def _trainable(model: nn.Module, config: AlignConfig) -> dict[str, nn.Parameter]:
    adapter = MLPAdapter(model)
    layers = resolve_layers(adapter, config.layers) if config.scope == "selected_mlp" else []
    return trainable_parameters(model, adapter, layers, config.scope)


def align_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[AlignExample],
                config: AlignConfig, *, on_step: StepFn | None = None) -> AlignReport:
    """Fine-tune `model` in place on refusal + benign examples (response tokens only); returns a report."""
    refusals = [e for e in examples if e.kind == "refusal"]
    benign = [e for e in examples if e.kind == "benign"]
    if not refusals:
        raise DataError("the align stage has no harmful prompts to refuse; raise data.n_align_harmful")
    device = next(model.parameters()).device
    trainable = _trainable(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, weight_decay=config.weight_decay)
    k_ref, k_ben = batch_split(config.batch_size, config.refusal_fraction, len(refusals), len(benign))
    ref_enc = [encode_align(tokenizer, e, config.max_length) for e in refusals]
    ben_enc = [encode_align(tokenizer, e, config.max_length) for e in benign]
    ref_plan = batch_schedule(len(ref_enc), k_ref, config.steps, config.seed) if k_ref else []
    ben_plan = batch_schedule(len(ben_enc), k_ben, config.steps, config.seed + 1) if k_ben else []
    pad, history, t0 = pad_id(tokenizer), [], time.perf_counter()
    model.eval()  # dropout off: steps are deterministic for a seed
    try:
        for step in range(config.steps):
            rows = [ref_enc[i] for i in (ref_plan[step] if ref_plan else [])] + \
                   [ben_enc[i] for i in (ben_plan[step] if ben_plan else [])]
            batch = to_device(collate(rows, pad), device)
            with autocast(device):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            per_example, _ = sequence_nll(logits, batch["labels"])
            loss = per_example.mean()
            loss.backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(list(trainable.values()), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ref_nll, ben_nll = _kind_nll(per_example.detach().float(), len(ref_plan[step]) if ref_plan else 0)
            record = AlignStep(step + 1, config.steps, float(loss.detach()), ref_nll, ben_nll, time.perf_counter() - t0)
            history.append(record)
            if on_step:
                on_step(record)
    finally:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return AlignReport(config.steps, time.perf_counter() - t0, len(refusals), len(benign),
                       sum(p.numel() for p in trainable.values()), sorted({e.source for e in refusals}), history)


def build_examples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, harmful_prompts: Sequence[str],
                   benign_prompts: Sequence[str], config: AlignConfig,
                   on_progress: ProgressFn | None = None) -> list[AlignExample]:
    """Refusal examples for the harmful prompts + the (still unchanged) model's answers to the benign ones."""
    return refusal_examples(harmful_prompts, config) + benign_examples(model, tokenizer, benign_prompts, config, on_progress)


def check_align(config: AlignConfig | None, n_align_harmful: int) -> None:
    """Fail before any work when alignment is on but the data has no align split."""
    from cku_core.errors import ConfigError

    if config is not None and config.enabled and n_align_harmful < 1:
        raise ConfigError("align.enabled needs harmful prompts to refuse: set data.n_align_harmful > 0 "
                          "(and data.n_align_benign for the benign half), or align.enabled=false")
