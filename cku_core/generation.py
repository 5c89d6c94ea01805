"""Batched text generation: left padding, KV cache, length-sorted batches, results in input order.

Greedy by default; seeded sampling (temperature / top-p / top-k) for the decoding attack. The
prompts handed in are already rendered model inputs (chat template applied, any prefill appended):
generation never re-renders, so what is stored with a response is exactly what the model saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from cku_core.data import pad_id
from cku_core.errors import ConfigError
from cku_core.fingerprint import canonical_json

ProgressFn = Callable[[int, int], None]


class GenSettings(BaseModel):
    """How one response is decoded. Stored as JSON with every response (column `gen_settings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(48, ge=1, description="Generated tokens at most (the eos token counts).")
    do_sample: bool = Field(False, description="False = greedy decoding; True = seeded sampling.")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature; used only when sampling.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus mass; 1.0 disables it. Sampling only.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0 disables it. Sampling only.")
    seed: int = Field(0, description="Seed of the sampling RNG (batch b uses seed + b); unused when greedy.")

    def to_json(self) -> str:
        return canonical_json(self.model_dump())

    def label(self) -> str:
        """Short human-readable tag, e.g. `greedy` or `t0.7-p0.9-k0-s1`."""
        if not self.do_sample:
            return "greedy"
        return f"t{self.temperature:g}-p{self.top_p:g}-k{self.top_k}-s{self.seed}"


@dataclass(frozen=True)
class Generation:
    text: str            # decoded continuation (special tokens removed), without the prompt
    token_ids: list[int]  # generated ids up to and excluding the first eos
    n_tokens: int         # len(token_ids)
    hit_eos: bool         # False = cut by max_new_tokens


@dataclass(frozen=True)
class GenerationStats:
    n_prompts: int
    n_generated_tokens: int  # every generated token, eos included, padding after eos excluded
    seconds: float
    tokens_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    outputs: list[Generation]  # same order as the prompts given
    stats: GenerationStats


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's eos plus the model's configured eos ids (chat models often have several)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(int(i) for i in ([configured] if isinstance(configured, int) else configured))
    return sorted(ids)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (the memory peak shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def left_pad(seqs: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding keeps every prompt's last token in the last column, where generation continues."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def _generation_config(settings: GenSettings, pad: int, eos: list[int]) -> GenerationConfig:
    # Built from scratch so the model's own generation_config (often do_sample=True) never leaks in.
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k) \
        if settings.do_sample else dict(temperature=None, top_p=None, top_k=None)
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample, num_beams=1,
        pad_token_id=pad, eos_token_id=eos, use_cache=True, **sampling,
    )


def _split_output(row: list[int], eos: set[int]) -> tuple[list[int], bool, int]:
    """(tokens before the first eos, whether eos was hit, tokens generated incl. that eos)."""
    for i, t in enumerate(row):
        if t in eos:
            return row[:i], True, i + 1
    return row, False, len(row)


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    settings: GenSettings | None = None,
    batch_size: int = 16,
    on_progress: ProgressFn | None = None,
) -> GenerationResult:
    """Continue each rendered prompt; outputs come back in the order of `prompts`.

    Sampling is seeded per batch inside `torch.random.fork_rng`, so the caller's RNG is untouched
    and the same prompts + settings + batch size give the same samples.
    """
    settings = settings or GenSettings()
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    pad, eos = pad_id(tokenizer), eos_ids(model, tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    outputs: list[Generation | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    config, eos_set = _generation_config(settings, pad, eos), set(eos)
    n_tokens, done, start = 0, 0, time.perf_counter()
    for b, batch in enumerate(length_sorted_batches([len(e) for e in encoded], batch_size)):
        ids, mask = left_pad([encoded[i] for i in batch], pad)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed + b)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        for row_i, i in enumerate(batch):
            kept, hit, used = _split_output(out[row_i, ids.shape[1]:].tolist(), eos_set)
            n_tokens += used
            text = tokenizer.decode(kept, skip_special_tokens=True)
            outputs[i] = Generation(text=text, token_ids=kept, n_tokens=len(kept), hit_eos=hit)
        done += len(batch)
        if on_progress:
            on_progress(done, len(prompts))
    seconds = time.perf_counter() - start
    stats = GenerationStats(len(prompts), n_tokens, seconds, n_tokens / seconds if seconds > 0 else 0.0)
    return GenerationResult(outputs=[o for o in outputs if o is not None], stats=stats)
