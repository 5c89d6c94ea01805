"""Seeded, disjoint splits: forget prompts, neuron-scoring (useful) prompts, evaluation prompts.

Harmful prompts are split into `forget` (unlearned on) and `eval_harmful` (held out for ASR and the
knowledge judge); benign prompts into `scoring` (neuron identification) and `eval_benign`
(perplexity, KL). Disjointness is by *normalised prompt text*, not by id: data sets repeat the same
request with different ids (and different data sets share requests), and a repeat in both forget
and eval would leak. The split digest goes into every cache key downstream.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from cku_core.errors import DataError
from cku_core.eval.sources import DataRecord, LoadedDataset, load_dataset
from cku_core.fingerprint import json_digest


class SplitConfig(BaseModel):
    """Which data sets feed which split, how many prompts each split gets, and the seed.

    Scale up by raising the counts; `n_scoring` = 128 matches the method's N_id.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    harmful_datasets: list[str] = Field(["advbench"], description="Pool for forget + held-out harmful eval.")
    eval_harmful_datasets: list[str] | None = Field(
        None, description="Optional separate pool for eval_harmful (e.g. forget on AdvBench, test on HarmBench); "
                          "its prompts that also occur in the forget pool are dropped.")
    benign_datasets: list[str] = Field(["benign_builtin"], description="Pool for scoring + held-out benign eval; "
                                       "add `mmlu_cot` (lm-eval wheel) for 128 scoring samples.")
    n_forget: int = Field(64, ge=0, description="Harmful prompts to unlearn on.")
    n_eval_harmful: int = Field(24, ge=0, description="Held-out harmful prompts for ASR / knowledge NLL.")
    n_scoring: int = Field(24, ge=0, description="Useful prompts for neuron scoring (the method uses 128).")
    n_eval_benign: int = Field(16, ge=0, description="Held-out benign prompts for perplexity and KL.")
    seed: int = Field(0, description="Shuffle seed (the method's localization seed is 0).")


@dataclass(frozen=True)
class Splits:
    forget: list[DataRecord]
    eval_harmful: list[DataRecord]
    scoring: list[DataRecord]
    eval_benign: list[DataRecord]
    sources: list[dict]  # provenance of every data set used (name, licence, digest, ...)
    config: SplitConfig
    digest: str

    def names(self) -> dict[str, list[DataRecord]]:
        return {"forget": self.forget, "eval_harmful": self.eval_harmful, "scoring": self.scoring,
                "eval_benign": self.eval_benign}

    def as_dict(self) -> dict:
        """Plain JSON (e.g. a cached pipeline artifact); `Splits.from_dict` reads it back."""
        return {"digest": self.digest, "config": self.config.model_dump(), "sources": self.sources,
                **{k: [r.as_dict() for r in v] for k, v in self.names().items()}}

    @classmethod
    def from_dict(cls, d: dict) -> Splits:
        def rec(x: dict) -> DataRecord:
            return DataRecord(**{**x, "choices": tuple(x["choices"]) if x.get("choices") else None})
        parts = {k: [rec(x) for x in d[k]] for k in ("forget", "eval_harmful", "scoring", "eval_benign")}
        return cls(**parts, sources=d["sources"], config=SplitConfig(**d["config"]), digest=d["digest"])


def normalize_prompt(text: str) -> str:
    """Lower case, letters and digits only, single spaces: the key for duplicates across splits."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def dedupe(records: Sequence[DataRecord]) -> list[DataRecord]:
    """First occurrence of each normalised prompt, order kept."""
    seen, out = set(), []
    for r in records:
        key = normalize_prompt(r.prompt)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def shuffled(records: Sequence[DataRecord], seed: int, salt: str) -> list[DataRecord]:
    # Sorting by id first makes the shuffle independent of load order; the salt decorrelates pools.
    out = sorted(records, key=lambda r: r.id)
    random.Random(f"{seed}:{salt}").shuffle(out)
    return out


def _take(pool: list[DataRecord], n: int, what: str) -> tuple[list[DataRecord], list[DataRecord]]:
    if n > len(pool):
        raise DataError(f"the {what} split needs {n} prompts but only {len(pool)} unique ones are left; "
                        f"lower the count or add data sets to its pool")
    return pool[:n], pool[n:]


def split_records(harmful: Sequence[DataRecord], benign: Sequence[DataRecord], config: SplitConfig,
                  eval_harmful_pool: Sequence[DataRecord] | None = None, sources: list[dict] | None = None) -> Splits:
    """The four disjoint splits from already loaded records."""
    pool = shuffled(dedupe(harmful), config.seed, "harmful")
    forget, rest = _take(pool, config.n_forget, "forget")
    if eval_harmful_pool is not None:
        used = {normalize_prompt(r.prompt) for r in harmful}
        rest = [r for r in shuffled(dedupe(eval_harmful_pool), config.seed, "eval") if normalize_prompt(r.prompt) not in used]
    eval_harmful, _ = _take(rest, config.n_eval_harmful, "eval_harmful")
    harmful_keys = {normalize_prompt(r.prompt) for r in [*forget, *eval_harmful]}
    benign_pool = [r for r in shuffled(dedupe(benign), config.seed, "benign") if normalize_prompt(r.prompt) not in harmful_keys]
    scoring, rest_b = _take(benign_pool, config.n_scoring, "scoring")
    eval_benign, _ = _take(rest_b, config.n_eval_benign, "eval_benign")
    parts = {"forget": forget, "eval_harmful": eval_harmful, "scoring": scoring, "eval_benign": eval_benign}
    digest = json_digest({"config": config.model_dump(), "sources": [s.get("digest") for s in sources or []],
                          "ids": {k: [r.id for r in v] for k, v in parts.items()}})
    return Splits(**parts, sources=sources or [], config=config, digest=digest)


def _load_all(names: Sequence[str]) -> tuple[list[DataRecord], list[LoadedDataset]]:
    loaded = [load_dataset(n) for n in names]
    return [r for ds in loaded for r in ds.records], loaded


def make_splits(config: SplitConfig | None = None) -> Splits:
    """Load the configured data sets and split them (deterministic for a given config and data)."""
    config = config or SplitConfig()
    harmful, h_sets = _load_all(config.harmful_datasets)
    benign, b_sets = _load_all(config.benign_datasets)
    eval_pool, e_sets = _load_all(config.eval_harmful_datasets) if config.eval_harmful_datasets else (None, [])
    sources = [ds.info() for ds in [*h_sets, *e_sets, *b_sets]]
    return split_records(harmful, benign, config, eval_harmful_pool=eval_pool, sources=sources)


def assert_disjoint(splits: Splits) -> None:
    """Raise DataError if any normalised prompt is in two splits (cheap; run it before training)."""
    seen: dict[str, str] = {}
    for name, records in splits.names().items():
        for r in records:
            key = normalize_prompt(r.prompt)
            if key in seen and seen[key] != name:
                raise DataError(f"prompt {r.id} is in both {seen[key]} and {name}; the splits must be disjoint")
            seen[key] = name
