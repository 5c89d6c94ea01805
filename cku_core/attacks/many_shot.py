"""Many-shot jailbreaking (Anil et al. 2024): earlier turns of the conversation in which the
assistant complied with harmful requests, then the real request.

The demonstrations are PyRIT's `many_shot_examples.json` (MIT; read from the installed wheel at
render time, never copied here), only those labelled harmful, a seeded choice of `shots` of them.
They are given as real chat turns rather than inside one user message: with open weights the
attacker writes the whole context, and a fine-tune that only taught "refuse the first request" is
the shallow alignment this attack is known to break. Demonstrations are cut to `max_demo_chars` to
keep the context (and CPU generation) small; the compliant opening is what carries the attack.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from cku_core.attacks.base import Attack, AttackInput
from cku_core.data import FALLBACK_TEMPLATE
from cku_core.errors import DataError

PYRIT_EXAMPLES = "pkg:pyrit/pyrit/datasets/jailbreak/many_shot_examples.json"


@lru_cache(maxsize=None)
def harmful_demonstrations() -> tuple[tuple[str, str], ...]:
    """(request, compliant answer) pairs from PyRIT labelled harmful, in file order."""
    from cku_core.eval.sources import resolve_path  # here, not at the top: cku_core.eval imports the attacks

    path, _ = resolve_path(PYRIT_EXAMPLES)
    if not path.is_file():
        raise DataError(f"PyRIT many-shot examples not found at {path}; reinstall `pip install --no-deps pyrit`")
    rows = json.loads(path.read_text(encoding="utf-8"))
    # the labels are free text written by a model ("Harmful.\n\nReason: ...", "**Harmful**", "Not harmful")
    pairs = tuple((r["user"].strip(), r["assistant"].strip()) for r in rows
                  if r.get("category", "").strip(" *\"'").lower().startswith("harmful")
                  and r["user"].strip() and r["assistant"].strip())
    if not pairs:
        raise DataError(f"{path} has no example labelled harmful; reinstall `pip install --no-deps pyrit`")
    return pairs


def _cut(text: str, limit: int) -> str:
    """At most `limit` characters, ending on a word boundary."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


@dataclass(frozen=True)
class ManyShotAttack(Attack):
    shots: int = 4
    max_demo_chars: int = 400
    seed: int = 0

    def demonstrations(self, prompt: str) -> list[tuple[str, str]]:
        """The same seeded demonstrations for every prompt, minus any that is the prompt itself."""
        pool = [d for d in harmful_demonstrations() if d[0] != prompt.strip()]
        chosen = random.Random(f"{self.seed}:many_shot").sample(pool, min(self.shots, len(pool)))
        return [(user, _cut(answer, self.max_demo_chars)) for user, answer in chosen]

    def render(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> AttackInput:
        turns: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        for user, answer in self.demonstrations(prompt):
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        turns.append({"role": "user", "content": prompt})
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        else:
            text = "".join(FALLBACK_TEMPLATE.format(prompt=t["content"]) if t["role"] == "user" else t["content"] + "\n"
                           for t in turns if t["role"] != "system")
        return AttackInput(user_message=prompt, model_input=text, prefill="")


ATTACK = ManyShotAttack(
    name="many_shot", family="many_shot", version="1",
    description="Four earlier chat turns in which the assistant complied with harmful requests (PyRIT's "
                "many-shot examples, cut to 400 characters), then the request.",
    source="Anil et al. 2024, 'Many-shot jailbreaking'; demonstrations from PyRIT (MIT)",
    license="MIT (demonstrations), Apache-2.0 (code)",
)
