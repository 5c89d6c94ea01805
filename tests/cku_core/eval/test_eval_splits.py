"""Forget, scoring and evaluation prompts are disjoint; the split is seeded and has a digest."""

import pytest

from cku_core.errors import DataError
from cku_core.eval.sources import DataRecord
from cku_core.eval.splits import SplitConfig, assert_disjoint, normalize_prompt, split_records


def _records(name: str, n: int, prefix: str, response: bool = False) -> list[DataRecord]:
    return [DataRecord(id=f"{name}:{i}", prompt=f"{prefix} number {i}", dataset=name,
                       response="ok" if response else None) for i in range(n)]


HARMFUL = _records("h", 40, "Harmful request")
# A repeat with other case/punctuation and another id: must never land in two splits.
HARMFUL_DUP = HARMFUL + [DataRecord(id="other:1", prompt="harmful REQUEST, number 3!", dataset="other")]
BENIGN = _records("b", 30, "Benign task", response=True)
CFG = SplitConfig(n_forget=20, n_eval_harmful=15, n_scoring=20, n_eval_benign=10, seed=0)


def _keys(records):
    return {normalize_prompt(r.prompt) for r in records}


def test_splits_are_disjoint_even_with_duplicates():
    s = split_records(HARMFUL_DUP, BENIGN, CFG)
    parts = list(s.names().values())
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            assert not _keys(a) & _keys(b)
    assert [len(p) for p in parts] == [20, 15, 20, 10]
    assert_disjoint(s)


def test_split_is_seeded_and_has_a_digest():
    a, b = split_records(HARMFUL, BENIGN, CFG), split_records(list(reversed(HARMFUL)), BENIGN, CFG)
    assert [r.id for r in a.forget] == [r.id for r in b.forget] and a.digest == b.digest  # load order irrelevant
    c = split_records(HARMFUL, BENIGN, CFG.model_copy(update={"seed": 1}))
    assert c.digest != a.digest and [r.id for r in c.forget] != [r.id for r in a.forget]
    assert len(a.digest) == 64


def test_separate_eval_pool_drops_prompts_seen_in_forget_pool():
    eval_pool = _records("e", 20, "Other request") + [HARMFUL[0]]
    s = split_records(HARMFUL, BENIGN, CFG, eval_harmful_pool=eval_pool)
    assert all(r.dataset == "e" for r in s.eval_harmful)
    assert_disjoint(s)


def test_too_few_prompts_is_a_clear_error():
    with pytest.raises(DataError, match="needs 50 prompts"):
        split_records(HARMFUL, BENIGN, CFG.model_copy(update={"n_forget": 50}))


def test_assert_disjoint_catches_a_leak():
    s = split_records(HARMFUL, BENIGN, CFG)
    leaked = type(s)(**{**s.__dict__, "eval_harmful": [*s.eval_harmful, s.forget[0]]})
    with pytest.raises(DataError, match="disjoint"):
        assert_disjoint(leaked)


def test_json_roundtrip():
    import json

    s = split_records(HARMFUL, BENIGN, CFG)
    back = type(s).from_dict(json.loads(json.dumps(s.as_dict())))
    assert back == s
