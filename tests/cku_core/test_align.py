"""The safety fine-tune (cku_core.align): varied seeded refusals, disjoint align splits, a loss that
falls, and only the chosen scope moving."""

from __future__ import annotations

import pytest
import torch

from cku_core.align import (
    AlignConfig,
    AlignExample,
    align_model,
    batch_split,
    build_examples,
    check_align,
    encode_align,
    load_refusals,
    refusal_examples,
    refusal_pool,
    sample_refusals,
)
from cku_core.data import Example, IGNORE_INDEX
from cku_core.errors import ConfigError, DataError
from cku_core.eval.sources import DataRecord
from cku_core.eval.splits import SplitConfig, assert_disjoint, make_splits, normalize_prompt, split_records
from cku_core.judges.keyword import RefusalKeywordJudge
from cku_core.tiny import tiny_model


# --- refusals ------------------------------------------------------------------------------------

def test_builtin_refusals_are_many_distinct_labelled_and_read_as_refusals() -> None:
    refusals = load_refusals()
    assert len(refusals) >= 40
    assert len({r.text for r in refusals}) == len(refusals) and len({r.id for r in refusals}) == len(refusals)
    assert len({r.category for r in refusals}) >= 4
    judge = RefusalKeywordJudge()
    # The evaluation's judge must see every training refusal as a refusal, or ASR would misread them.
    assert [r.id for r in refusals if judge.refusal_phrase(r.text) is None] == []


def test_refusal_sampling_is_seeded_and_uses_every_text_before_repeating() -> None:
    pool = load_refusals()
    a, b = sample_refusals(2 * len(pool), pool, seed=0), sample_refusals(2 * len(pool), pool, seed=0)
    assert a == b
    assert a != sample_refusals(2 * len(pool), pool, seed=1)
    first, second = a[: len(pool)], a[len(pool):]
    assert len({r.id for r in first}) == len(pool) and len({r.id for r in second}) == len(pool)
    assert [r.id for r in first] != [r.id for r in pool]  # shuffled, not file order


def test_refusal_pool_subset_is_seeded() -> None:
    pool = load_refusals()
    small = refusal_pool(pool, 5, seed=3)
    assert len(small) == 5 and small == refusal_pool(pool, 5, seed=3) and small != refusal_pool(pool, 5, seed=4)
    ex = refusal_examples([f"harmful {i}" for i in range(20)], AlignConfig(n_refusal_texts=5, seed=3), pool)
    assert {e.source for e in ex} == {r.id for r in small}
    assert all(e.kind == "refusal" and e.complete for e in ex)


# --- splits --------------------------------------------------------------------------------------

def _records(name: str, n: int, prefix: str) -> list[DataRecord]:
    return [DataRecord(id=f"{name}:{i}", prompt=f"{prefix} number {i}", dataset=name) for i in range(n)]


def _keys(records: list[DataRecord]) -> set[str]:
    return {normalize_prompt(r.prompt) for r in records}


def test_align_splits_are_disjoint_from_every_other_split() -> None:
    harmful = _records("h", 40, "Harmful request")
    benign = _records("b", 30, "Benign task")
    # The align benign pool repeats eval prompts (other case, other ids): they must be dropped.
    align_pool = _records("a", 10, "Align task") + [DataRecord(id="a:dup", prompt="BENIGN task, number 4!", dataset="a")] \
        + [DataRecord(id=f"a:b{i}", prompt=f"benign task number {i}", dataset="a") for i in range(30)]
    cfg = SplitConfig(n_forget=10, n_eval_harmful=10, n_scoring=10, n_eval_benign=10, n_align_harmful=15,
                      n_align_benign=10)
    s = split_records(harmful, benign, cfg, align_benign_pool=align_pool)
    parts = list(s.all_names().values())
    assert [len(p) for p in parts] == [10, 10, 10, 10, 15, 10]
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            assert not _keys(a) & _keys(b)
    assert_disjoint(s)
    # 10 own prompts + the 10 benign ones no other split took; the 20 repeats of taken ones do not count.
    assert len(split_records(harmful, benign, cfg.model_copy(update={"n_align_benign": 20}),
                             align_benign_pool=align_pool).align_benign) == 20
    with pytest.raises(DataError, match="align_benign"):
        split_records(harmful, benign, cfg.model_copy(update={"n_align_benign": 21}), align_benign_pool=align_pool)


def test_adding_align_splits_keeps_the_other_splits_and_old_digests() -> None:
    harmful, benign = _records("h", 40, "Harmful request"), _records("b", 30, "Benign task")
    base = SplitConfig(n_forget=10, n_eval_harmful=10, n_scoring=10, n_eval_benign=10)
    plain = split_records(harmful, benign, base)
    aligned = split_records(harmful, benign, base.model_copy(update={"n_align_harmful": 5, "n_align_benign": 5}))
    assert plain.names() == aligned.names()
    assert plain.digest != aligned.digest and plain.align_digest() != aligned.align_digest()
    # With no align split, the align fields stay out of the digest (cached stages of older configs are kept).
    moved = split_records(harmful, benign, base.model_copy(update={"align_benign_datasets": ["other"]}))
    assert moved.digest == plain.digest


def test_real_default_data_has_disjoint_align_splits() -> None:
    cfg = SplitConfig(n_forget=32, n_eval_harmful=12, n_scoring=32, n_eval_benign=16, n_align_harmful=64,
                      n_align_benign=48)
    s = make_splits(cfg)
    assert_disjoint(s)
    assert len(s.align_harmful) == 64 and len(s.align_benign) == 48
    from cku_core.eval.sources import load_dataset

    # The over-refusal evaluation set is a separate builtin: none of it may be trained on.
    assert not _keys(load_dataset("xstest_like_builtin").records) & _keys(s.align_benign)
    assert {r.dataset for r in s.align_benign} == {"align_benign_builtin"}


# --- training ------------------------------------------------------------------------------------

def test_encode_align_teaches_eos_only_after_complete_answers(tokenizer) -> None:
    ex = Example("Tell me about bread.", "Bread is baked dough")
    done = encode_align(tokenizer, AlignExample(ex, "benign", complete=True), 96)
    cut = encode_align(tokenizer, AlignExample(ex, "benign", complete=False), 96)
    assert done["input_ids"][-1] == tokenizer.eos_token_id and done["labels"][-1] == tokenizer.eos_token_id
    assert cut["input_ids"] == done["input_ids"][:-1] and cut["labels"][-1] != IGNORE_INDEX


def test_batch_split_keeps_both_kinds() -> None:
    assert batch_split(8, 0.5, 10, 10) == (4, 4)
    assert batch_split(8, 0.0, 10, 10) == (1, 7) and batch_split(8, 1.0, 10, 10) == (7, 1)
    assert batch_split(8, 0.5, 10, 0) == (8, 0)


def test_align_loss_falls_and_benign_answers_come_from_the_model(tokenizer) -> None:
    torch.manual_seed(0)
    model = tiny_model("llama")
    harmful = [f"How do I build a dangerous device {i}?" for i in range(8)]
    benign = [f"Tell me about the sea ({i})." for i in range(8)]
    config = AlignConfig(enabled=True, steps=10, lr=1e-2, batch_size=8, max_length=64, max_new_tokens=8,
                         n_refusal_texts=3)
    examples = build_examples(model, tokenizer, harmful, benign, config)
    assert [e.kind for e in examples].count("refusal") == 8
    assert all(e.source == "original_model" for e in examples if e.kind == "benign")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = align_model(model, tokenizer, examples, config)
    first, last = report.history[0], report.history[-1]
    assert report.steps == 10 and last.refusal_nll < 0.8 * first.refusal_nll, (first, last)
    assert report.n_refusal_examples == 8 and len(report.refusal_ids) == 3
    assert all(not p.requires_grad for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_mlp_scope_leaves_everything_else_unchanged(tokenizer) -> None:
    model = tiny_model("llama")
    examples = refusal_examples(["How do I pick a lock?", "How do I make poison?"], AlignConfig())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    align_model(model, tokenizer, examples, AlignConfig(steps=2, lr=1e-2, batch_size=2, max_length=64, scope="all_mlp"))
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(".mlp." in n for n in changed), changed


def test_align_needs_harmful_prompts(tokenizer) -> None:
    with pytest.raises(DataError, match="n_align_harmful"):
        align_model(tiny_model("llama"), tokenizer,
                    [AlignExample(Example("Hi there", "Hello!"), "benign")], AlignConfig(steps=1))
    with pytest.raises(ConfigError, match="n_align_harmful"):
        check_align(AlignConfig(enabled=True), 0)
    check_align(AlignConfig(enabled=False), 0)
    check_align(AlignConfig(enabled=True), 4)
