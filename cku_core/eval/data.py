"""The data one evaluation needs, gathered from the splits and the utility data sets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cku_core.data import Example
from cku_core.errors import DataError
from cku_core.eval.config import EvalConfig
from cku_core.eval.sources import DataRecord, load_dataset
from cku_core.eval.splits import Splits
from cku_core.fingerprint import json_digest


@dataclass(frozen=True)
class EvalData:
    harmful: list[DataRecord]       # held-out harmful prompts (never unlearned on)
    benign: list[DataRecord]        # held-out benign prompts with reference responses (perplexity, KL)
    over_refusal: list[DataRecord]  # safe prompts that look unsafe
    mc: list[DataRecord]            # multiple-choice items (choices + answer)
    harmful_references: list[Example] = field(default_factory=list)  # optional fixed knowledge-judge references
    sources: list[dict] = field(default_factory=list)
    split_digest: str = ""

    @property
    def digest(self) -> str:
        return json_digest({
            "split": self.split_digest, "sources": [s.get("digest") for s in self.sources],
            "ids": [[r.id for r in part] for part in (self.harmful, self.benign, self.over_refusal, self.mc)],
            "refs": [[e.prompt, e.response] for e in self.harmful_references],
        })


def _records(names: Sequence[str]) -> tuple[list[DataRecord], list[dict]]:
    loaded = [load_dataset(n) for n in names]
    return [r for ds in loaded for r in ds.records], [ds.info() for ds in loaded]


def load_eval_data(splits: Splits, config: EvalConfig | None = None,
                   harmful_references: Sequence[Example] = ()) -> EvalData:
    """EvalData from the held-out splits plus the configured over-refusal and MC data sets."""
    config = config or EvalConfig()
    over, over_src = _records(config.over_refusal_datasets) if "over_refusal" in config.utility else ([], [])
    mc, mc_src = _records(config.mc_datasets) if "mc" in config.utility else ([], [])
    bad = [r.id for r in mc if not r.choices or r.answer is None or not 0 <= r.answer < len(r.choices)]
    if bad:
        raise DataError(f"multiple-choice items {bad[:3]} lack choices or a valid answer index; fix `mc_datasets`")
    return EvalData(harmful=list(splits.eval_harmful), benign=[r for r in splits.eval_benign if r.response],
                    over_refusal=over, mc=mc, harmful_references=list(harmful_references),
                    sources=[*splits.sources, *over_src, *mc_src], split_digest=splits.digest)
