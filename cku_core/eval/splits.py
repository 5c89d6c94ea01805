"""Seeded, disjoint splits: forget prompts, neuron-scoring (useful) prompts, evaluation prompts.

Harmful prompts are split into `forget` (unlearned on) and `eval_harmful` (held out for ASR and the
knowledge judge); benign prompts into `scoring` (neuron identification) and `eval_benign`
(perplexity, KL). The optional `align_harmful` / `align_benign` splits feed the safety fine-tune
(`cku_core.align`), which turns a model that complies with harmful requests into one that refuses
them, as in the method's setting. Disjointness is by *normalised prompt text*, not by id: data sets repeat the same
request with different ids (and different data sets share requests), and a repeat in both forget
and eval would leak. The split digest goes into every cache key downstream.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    n_align_harmful: int = Field(0, ge=0, description=(
        "Harmful prompts of the safety fine-tune (`align` stage), answered there with refusals; taken from the "
        "harmful pool after forget and eval_harmful. 0 = no align split."))
    n_align_benign: int = Field(0, ge=0, description=(
        "Benign prompts of the safety fine-tune, answered by the model itself so its benign behaviour is kept."))
    align_benign_datasets: list[str] = Field(["align_benign_builtin"], description=(
        "Pool of the align_benign split (its prompts that occur in any other split are dropped); the builtin "
        "set mixes everyday tasks with safe prompts that look unsafe, against over-refusal."))
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
    align_harmful: list[DataRecord] = field(default_factory=list)
    align_benign: list[DataRecord] = field(default_factory=list)

    def names(self) -> dict[str, list[DataRecord]]:
        """The splits that unlearning and evaluation read (the align splits are only for the align stage)."""
        return {"forget": self.forget, "eval_harmful": self.eval_harmful, "scoring": self.scoring,
                "eval_benign": self.eval_benign}

    def align_names(self) -> dict[str, list[DataRecord]]:
        return {"align_harmful": self.align_harmful, "align_benign": self.align_benign}

    def all_names(self) -> dict[str, list[DataRecord]]:
        return {**self.names(), **self.align_names()}

    def align_digest(self) -> str:
        """What the align stage's cache key needs: the align prompts only, not the other splits."""
        return json_digest({k: [[r.id, r.prompt] for r in v] for k, v in self.align_names().items()})

    def as_dict(self) -> dict:
        """Plain JSON (e.g. a cached pipeline artifact); `Splits.from_dict` reads it back."""
        return {"digest": self.digest, "config": self.config.model_dump(), "sources": self.sources,
                **{k: [r.as_dict() for r in v] for k, v in self.all_names().items() if v or k in self.names()}}

    @classmethod
    def from_dict(cls, d: dict) -> Splits:
        def rec(x: dict) -> DataRecord:
            return DataRecord(**{**x, "choices": tuple(x["choices"]) if x.get("choices") else None})
        parts = {k: [rec(x) for x in d[k]] for k in ("forget", "eval_harmful", "scoring", "eval_benign")}
        parts.update({k: [rec(x) for x in d.get(k, [])] for k in ("align_harmful", "align_benign")})
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


# SplitConfig fields of the align splits: left out of the split digest while both counts are 0, so
# configs written before the align stage existed keep their digest (and every cached stage after it).
ALIGN_FIELDS = frozenset({"n_align_harmful", "n_align_benign", "align_benign_datasets"})


def _without(pool: Sequence[DataRecord], used: Sequence[DataRecord]) -> list[DataRecord]:
    keys = {normalize_prompt(r.prompt) for r in used}
    return [r for r in pool if normalize_prompt(r.prompt) not in keys]


def split_records(harmful: Sequence[DataRecord], benign: Sequence[DataRecord], config: SplitConfig,
                  eval_harmful_pool: Sequence[DataRecord] | None = None, sources: list[dict] | None = None,
                  align_benign_pool: Sequence[DataRecord] | None = None) -> Splits:
    """The disjoint splits from already loaded records.

    The align splits are taken last, from what the other splits left, so adding them never changes
    forget / eval / scoring. `align_benign_pool` defaults to the benign pool's remainder.
    """
    pool = shuffled(dedupe(harmful), config.seed, "harmful")
    forget, rest = _take(pool, config.n_forget, "forget")
    after_forget = rest
    if eval_harmful_pool is not None:
        used = {normalize_prompt(r.prompt) for r in harmful}
        rest = [r for r in shuffled(dedupe(eval_harmful_pool), config.seed, "eval") if normalize_prompt(r.prompt) not in used]
    eval_harmful, rest = _take(rest, config.n_eval_harmful, "eval_harmful")
    harmful_keys = {normalize_prompt(r.prompt) for r in [*forget, *eval_harmful]}
    benign_pool = [r for r in shuffled(dedupe(benign), config.seed, "benign") if normalize_prompt(r.prompt) not in harmful_keys]
    scoring, rest_b = _take(benign_pool, config.n_scoring, "scoring")
    eval_benign, rest_b = _take(rest_b, config.n_eval_benign, "eval_benign")
    parts = {"forget": forget, "eval_harmful": eval_harmful, "scoring": scoring, "eval_benign": eval_benign}
    taken = [r for v in parts.values() for r in v]
    align_harmful, _ = _take(_without(rest if eval_harmful_pool is None else after_forget, taken),
                             config.n_align_harmful, "align_harmful")
    b_pool = rest_b if align_benign_pool is None else shuffled(dedupe(align_benign_pool), config.seed, "align")
    align_benign, _ = _take(_without(b_pool, [*taken, *align_harmful]), config.n_align_benign, "align_benign")
    aligned = bool(config.n_align_harmful or config.n_align_benign)
    ids = {k: [r.id for r in v] for k, v in parts.items()}
    if aligned:
        ids.update(align_harmful=[r.id for r in align_harmful], align_benign=[r.id for r in align_benign])
    digest = json_digest({"config": config.model_dump(exclude=None if aligned else set(ALIGN_FIELDS)),
                          "sources": [s.get("digest") for s in sources or []], "ids": ids})
    return Splits(**parts, sources=sources or [], config=config, digest=digest,
                  align_harmful=align_harmful, align_benign=align_benign)


def _load_all(names: Sequence[str]) -> tuple[list[DataRecord], list[LoadedDataset]]:
    loaded = [load_dataset(n) for n in names]
    return [r for ds in loaded for r in ds.records], loaded


def make_splits(config: SplitConfig | None = None) -> Splits:
    """Load the configured data sets and split them (deterministic for a given config and data)."""
    config = config or SplitConfig()
    harmful, h_sets = _load_all(config.harmful_datasets)
    benign, b_sets = _load_all(config.benign_datasets)
    eval_pool, e_sets = _load_all(config.eval_harmful_datasets) if config.eval_harmful_datasets else (None, [])
    align_pool, a_sets = _load_all(config.align_benign_datasets) if config.n_align_benign else (None, [])
    sources = [ds.info() for ds in [*h_sets, *e_sets, *b_sets, *a_sets]]
    return split_records(harmful, benign, config, eval_harmful_pool=eval_pool, sources=sources,
                         align_benign_pool=align_pool)


def assert_disjoint(splits: Splits) -> None:
    """Raise DataError if any normalised prompt is in two splits (cheap; run it before training)."""
    seen: dict[str, str] = {}
    for name, records in splits.all_names().items():
        for r in records:
            key = normalize_prompt(r.prompt)
            if key in seen and seen[key] != name:
                raise DataError(f"prompt {r.id} is in both {seen[key]} and {name}; the splits must be disjoint")
            seen[key] = name
