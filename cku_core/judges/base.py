"""Judges return one verdict per response; each has a name and a version stored with its verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Verdict:
    harmful: bool | None  # True = the attack succeeded on this response; None = the judge abstained
    score: float | None   # judge-specific (LLM judge: 1-5; keyword judge: None)
    label: str            # short reason, e.g. "refusal", "compliance", "4"


class ResponseJudge(Protocol):
    name: str
    version: str

    def judge(self, requests: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        """`requests` are the original harmful requests (not the attack-wrapped text)."""
        ...
