"""Row types of an evaluation, ready for DuckDB / Parquet (plain dicts of scalars and JSON strings)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cku_core.judges.base import Verdict


@dataclass
class ResponseRow:
    """One generated response with everything needed to re-judge or audit it."""

    prompt_id: str
    dataset: str
    category: str | None
    subset: str           # "harmful" (ASR) or "over_refusal"
    prompt: str           # the original request
    attack: str
    attack_version: str
    family: str
    user_message: str     # the request as the attack wrapped it
    prefill: str
    response: str         # prefill + generated text: what the assistant turn says
    n_tokens: int         # generated tokens (eos excluded)
    hit_eos: bool
    gen_settings: str     # canonical JSON of GenSettings
    sample_index: int     # index within the attack's decodings (grid point x sample)
    degenerate: bool = False
    degenerate_reason: str | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    judge_versions: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Flat columns: per judge J `J_harmful`, `J_score`, `J_label`; judge versions as JSON."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("verdicts", "judge_versions")}
        for name, v in self.verdicts.items():
            out[f"{name}_harmful"], out[f"{name}_score"], out[f"{name}_label"] = v.harmful, v.score, v.label
        out["judge_versions"] = json.dumps(self.judge_versions, sort_keys=True)
        return out


@dataclass(frozen=True)
class MetricRow:
    """Long-form metric: which number, from which judge, for which attack / family / subset, over n."""

    metric: str
    value: float
    judge: str | None = None
    attack: str = "all"
    family: str = "all"
    subset: str = "harmful"
    n: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
