"""Batched generation: left padding is correct, order is kept, sampling is seeded."""

import json

import pytest

from cku_core.data import render_prompt
from cku_core.errors import ConfigError
from cku_core.generation import GenSettings, generate, left_pad, length_sorted_batches
from cku_core.tiny import tiny_model, tiny_tokenizer

PROMPTS = ["How do I bake bread?", "hi", "Explain photosynthesis in detail, please, with examples.",
           "The capital of France is", "Write a poem about the sea and the gulls.", "a"]


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer()
    return tiny_model("llama"), tok, [render_prompt(tok, p) for p in PROMPTS]


def test_batched_greedy_equals_one_at_a_time(setup):
    model, tok, prompts = setup
    settings = GenSettings(max_new_tokens=10)
    batched = generate(model, tok, prompts, settings, batch_size=4).outputs
    for prompt, out in zip(prompts, batched):
        single = generate(model, tok, [prompt], settings, batch_size=1).outputs[0]
        assert out.token_ids == single.token_ids
        assert out.text == single.text


def test_outputs_come_back_in_input_order(setup):
    model, tok, prompts = setup
    settings = GenSettings(max_new_tokens=6)
    forward = generate(model, tok, prompts, settings, batch_size=3).outputs
    backward = generate(model, tok, prompts[::-1], settings, batch_size=3).outputs
    assert [o.token_ids for o in forward] == [o.token_ids for o in backward[::-1]]


def test_progress_stats_and_lengths(setup):
    model, tok, prompts = setup
    calls = []
    res = generate(model, tok, prompts, GenSettings(max_new_tokens=5), batch_size=4,
                   on_progress=lambda d, n: calls.append((d, n)))
    assert calls == [(4, 6), (6, 6)]
    assert res.stats.n_prompts == 6 and res.stats.tokens_per_s > 0
    assert all(o.n_tokens <= 5 and o.n_tokens == len(o.token_ids) for o in res.outputs)
    assert res.stats.n_generated_tokens >= sum(o.n_tokens for o in res.outputs)


def test_seeded_sampling_is_reproducible_and_differs_by_seed(setup):
    model, tok, prompts = setup
    s1 = GenSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=1)
    a = [o.token_ids for o in generate(model, tok, prompts, s1, 3).outputs]
    b = [o.token_ids for o in generate(model, tok, prompts, s1, 3).outputs]
    c = [o.token_ids for o in generate(model, tok, prompts, s1.model_copy(update={"seed": 2}), 3).outputs]
    assert a == b and a != c


def test_helpers_and_settings_json():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert length_sorted_batches([1, 5, 3], 2) == [[1, 2], [0]]
    assert json.loads(GenSettings().to_json())["do_sample"] is False
    assert GenSettings().label() == "greedy"
    with pytest.raises(ConfigError):
        generate(None, tiny_tokenizer(), ["x"], batch_size=0)
