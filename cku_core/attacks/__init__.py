"""Registry of attacks. One small module per attack; adding one (e.g. GCG) = adding one file.

Every module in this package except `base` must define `ATTACK` (an `Attack` instance, or a
subclass instance that overrides `render` / `settings` / `prepare`). Modules are discovered at
import, so nothing else has to be edited to add an attack.
"""

from __future__ import annotations

import importlib
import pkgutil

from cku_core.attacks.base import PROMPT_SLOT, Attack, AttackInput
from cku_core.errors import ConfigError

ATTACKS: dict[str, Attack] = {}

# The default suite: one direct baseline, six template families, a prefill and a decoding attack.
DEFAULT_ATTACKS: tuple[str, ...] = (
    "direct", "prefix_injection", "refusal_suppression", "persona_aim", "nested_fiction",
    "json_wrapper", "base64", "prefill_sure", "decoding_grid",
)


def register_attack(attack: Attack, *, replace: bool = False) -> Attack:
    if attack.name in ATTACKS and not replace:
        raise ConfigError(f"attack {attack.name!r} is registered twice; give it another name")
    ATTACKS[attack.name] = attack
    return attack


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


def _discover() -> None:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name == "base" or mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        attack = getattr(module, "ATTACK", None)
        if not isinstance(attack, Attack):
            raise ConfigError(f"cku_core/attacks/{mod.name}.py must define ATTACK = Attack(...)")
        register_attack(attack)


_discover()

__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "PROMPT_SLOT", "Attack", "AttackInput", "get_attack", "register_attack"]
