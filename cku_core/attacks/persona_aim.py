"""Role-play / persona: the AIM ('always intelligent and Machiavellian') template from PyRIT.

The text is read from the installed `pyrit` wheel (MIT) at render time, never copied here; without
the wheel this attack raises a DataError that says how to install it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cku_core.attacks.base import Attack
from cku_core.errors import DataError

PYRIT_TEMPLATE_DIR = "pkg:pyrit/pyrit/datasets/jailbreak/templates"


@lru_cache(maxsize=None)
def load_pyrit_template(file_name: str) -> str:
    """The `value` of a PyRIT jailbreak template YAML (its `{{ prompt }}` slot kept)."""
    import yaml

    from cku_core.eval.sources import resolve_path  # here, not at the top: cku_core.eval imports the attacks

    path, _ = resolve_path(f"{PYRIT_TEMPLATE_DIR}/{file_name}")
    if not path.is_file():
        raise DataError(f"PyRIT template {file_name} not found at {path}; reinstall `pip install --no-deps pyrit`")
    value = yaml.safe_load(path.read_text(encoding="utf-8"))["value"]
    if "{{ prompt }}" not in value:
        raise DataError(f"PyRIT template {file_name} has no '{{{{ prompt }}}}' slot")
    return value.strip()


@dataclass(frozen=True)
class PyritTemplateAttack(Attack):
    pyrit_file: str = ""

    def user_message(self, prompt: str) -> str:
        return load_pyrit_template(self.pyrit_file).replace("{{ prompt }}", prompt)


ATTACK = PyritTemplateAttack(
    name="persona_aim", family="persona", version="1", pyrit_file="aim.yaml",
    description="AIM persona (DAN family): an amoral character that never refuses.",
    source="PyRIT jailbreak template aim.yaml (jailbreakchat, Alex Albert)", license="MIT",
)
