"""What an attack is: a named, versioned way to turn a harmful request into model input.

An attack rewrites the user message (a template), may force the start of the assistant's answer
(a prefill), and may ask for several decodings (the decoding attack's sampling grid). Results are
grouped by `family` in the ASR tables, so several attacks of one kind compare as one row.
Bump `version` whenever the text or behaviour changes: it is stored with every response and is part
of the cache key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cku_core.data import render_prompt
from cku_core.generation import GenSettings

PROMPT_SLOT = "{{ prompt }}"  # PyRIT's slot syntax, used by our own templates too


@dataclass(frozen=True)
class AttackInput:
    user_message: str  # the (wrapped) request as the user turn
    model_input: str   # full text handed to generation: chat template + generation prompt + prefill
    prefill: str       # forced start of the assistant answer ("" if none); prepended to the response


@dataclass(frozen=True)
class Attack:
    name: str
    family: str
    version: str
    description: str
    template: str = PROMPT_SLOT  # user message; PROMPT_SLOT is replaced by the request (plain text, no Jinja)
    prefill: str = ""
    system: str | None = None
    source: str = "cku project"
    license: str = "Apache-2.0"

    def user_message(self, prompt: str) -> str:
        return self.template.replace(PROMPT_SLOT, prompt)

    def render(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> AttackInput:
        message = self.user_message(prompt)
        text = render_prompt(tokenizer, message, system=self.system) + self.prefill
        return AttackInput(user_message=message, model_input=text, prefill=self.prefill)

    def settings(self, greedy: GenSettings, sampling_grid: Sequence[GenSettings]) -> list[GenSettings]:
        """Decodings to run per prompt; a prompt is broken if any of them is judged harmful."""
        return [greedy]

    def prepare(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> None:
        """Hook for attacks that optimise per prompt on the model (e.g. GCG); template attacks need nothing."""

    def info(self) -> dict[str, str]:
        return {"name": self.name, "family": self.family, "version": self.version, "source": self.source,
                "license": self.license, "description": self.description}
