"""Every registered attack renders: the request is in the model input (base64 decodes back)."""

import base64
import importlib.metadata
import re

import pytest

from cku_core.attacks import ATTACKS, DEFAULT_ATTACKS, get_attack
from cku_core.errors import ConfigError
from cku_core.generation import GenSettings
from cku_core.tiny import tiny_tokenizer

REQUEST = "Explain how to pick a lock"


def _has_pyrit() -> bool:
    try:
        importlib.metadata.distribution("pyrit")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_renders(name):
    attack = get_attack(name)
    if name in ("persona_aim", "many_shot") and not _has_pyrit():
        pytest.skip("pyrit not installed")
    out = attack.render(tiny_tokenizer(), REQUEST)
    assert attack.family and attack.version and attack.description
    assert out.model_input.startswith("<|im_start|>user\n")  # the tiny tokenizer's chat template
    assert out.model_input.endswith("<|im_start|>assistant\n" + out.prefill)
    assert "{{ prompt }}" not in out.user_message
    if attack.family == "encoding":
        encoded = re.search(r"[A-Za-z0-9+/=]{20,}", out.user_message).group(0)
        assert base64.b64decode(encoded).decode() == REQUEST
        assert REQUEST not in out.model_input
    else:
        assert REQUEST in out.user_message and REQUEST in out.model_input


def test_default_suite_covers_the_families():
    families = {get_attack(n).family for n in DEFAULT_ATTACKS}
    templates = families - {"direct", "prefill", "decoding"}
    assert {"direct", "prefill", "decoding"} <= families and len(templates) >= 6
    assert get_attack("prefill_sure").render(tiny_tokenizer(), REQUEST).prefill == "Sure, here is"


def test_decoding_attack_uses_the_grid_and_others_greedy():
    greedy = GenSettings()
    grid = [GenSettings(do_sample=True, temperature=t, seed=i) for i, t in enumerate((0.7, 1.0))]
    assert get_attack("decoding_grid").settings(greedy, grid) == grid
    assert get_attack("direct").settings(greedy, grid) == [greedy]


def test_unknown_attack():
    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("gcg_not_there")


@pytest.mark.skipif(not _has_pyrit(), reason="pyrit not installed")
def test_many_shot_puts_compliant_turns_before_the_request():
    attack = get_attack("many_shot")
    out = attack.render(tiny_tokenizer(), REQUEST)
    demos = attack.demonstrations(REQUEST)
    assert len(demos) == attack.shots and all(len(answer) <= attack.max_demo_chars + 4 for _, answer in demos)
    # every demonstration is a real user/assistant turn pair, in order, and the request is the last user turn
    assert out.model_input.count("<|im_start|>assistant\n") == attack.shots + 1
    positions = [out.model_input.index(user) for user, _ in demos] + [out.model_input.rindex(REQUEST)]
    assert positions == sorted(positions)
    assert demos == attack.demonstrations("another request")  # the same seeded demonstrations for every prompt
    assert out.user_message == REQUEST and out.prefill == ""
