import pytest
import torch

from cku_core.adapters import MLPAdapter
from cku_core.config import ScoringConfig
from cku_core.data import Example, encode_examples, iter_batches, pad_id
from cku_core.errors import ConfigError
from cku_core.scoring import SCORERS, score_neurons
from cku_core.tiny import TINY_MODEL_TYPES, tiny_model

ALL_SCORERS = ["grad_x_act", "activation", "wanda", "snip", "random"]


def test_registry_has_every_scorer():
    assert set(ALL_SCORERS) <= set(SCORERS)


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
@pytest.mark.parametrize("scorer", ALL_SCORERS)
def test_scores_are_float32_per_layer_and_deterministic(model_type, scorer, tokenizer, useful):
    model = tiny_model(model_type)
    config = ScoringConfig(scorer=scorer, layers=[1, 2], batch_size=3)
    first = score_neurons(model, tokenizer, useful, config)
    again = score_neurons(model, tokenizer, useful, config)
    assert sorted(first) == [1, 2]
    for layer, s in first.items():
        assert s.dtype == torch.float32 and s.shape == (64,)
        assert torch.isfinite(s).all() and (s >= 0).all()
        assert torch.equal(s, again[layer])
    if scorer != "random":
        assert all(s.max() > 0 for s in first.values())
    assert not any(p.requires_grad is False for p in model.parameters()), "scoring must restore requires_grad"


def test_batch_size_does_not_change_scores(tokenizer, useful):
    model = tiny_model("llama")
    a = score_neurons(model, tokenizer, useful, ScoringConfig(layers=[1], batch_size=2))
    b = score_neurons(model, tokenizer, useful, ScoringConfig(layers=[1], batch_size=16))
    torch.testing.assert_close(a[1], b[1], rtol=1e-4, atol=1e-9)


def test_prompt_tokens_do_not_count(tokenizer):
    """Two data sets that differ only in their prompts' wording after the response-carrying part
    give different scores, but changing padding/prompt masking must be respected: a response-free
    example contributes nothing."""
    model = tiny_model("llama")
    base = [Example("Tell me about bread.", "Bread is flour and water.")]
    scores = score_neurons(model, tokenizer, base, ScoringConfig(scorer="activation", layers=[1]))
    # The activation scorer over response positions equals a manual computation.
    adapter = MLPAdapter(model)
    batch = next(iter_batches(encode_examples(tokenizer, base, 512), 1, pad_id(tokenizer)))
    captured = {}
    h = adapter.down_proj(1).register_forward_pre_hook(lambda m, a: captured.setdefault("a", a[0].detach()))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    h.remove()
    predicts_response = (batch["labels"][0, 1:] != -100)
    manual = captured["a"][0, :-1][predicts_response].abs().mean(0)
    torch.testing.assert_close(scores[1], manual, rtol=1e-5, atol=1e-7)


def test_grad_x_act_matches_autograd(tokenizer, useful):
    """|a * dL/da| from the hook equals the product computed with plain autograd on one example."""
    model = tiny_model("llama")
    ex = useful[:1]
    scores = score_neurons(model, tokenizer, ex, ScoringConfig(layers=[2], batch_size=1))
    adapter = MLPAdapter(model)
    batch = next(iter_batches(encode_examples(tokenizer, ex, 512), 1, pad_id(tokenizer)))
    store = {}

    def keep(module, args):
        args[0].retain_grad()
        store["a"] = args[0]
    h = adapter.down_proj(2).register_forward_pre_hook(keep)
    from cku_core.losses import sequence_nll
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sequence_nll(logits, batch["labels"])[0].sum().backward()
    h.remove()
    model.zero_grad()
    a, g = store["a"][0], store["a"].grad[0]
    mask = torch.zeros(a.shape[0], dtype=torch.bool)
    mask[:-1] = batch["labels"][0, 1:] != -100
    manual = (a * g).abs()[mask].mean(0)
    torch.testing.assert_close(scores[2], manual, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("layers", [[], [7], [-1]])
def test_bad_layers_are_rejected(layers, tokenizer, useful):
    with pytest.raises(ConfigError, match="layer"):
        score_neurons(tiny_model("llama"), tokenizer, useful, ScoringConfig(layers=layers))


def test_seed_selects_samples_and_random_scores(tokenizer, useful):
    model = tiny_model("llama")
    a = score_neurons(model, tokenizer, useful, ScoringConfig(scorer="random", layers=[1], seed=0))
    b = score_neurons(model, tokenizer, useful, ScoringConfig(scorer="random", layers=[1], seed=1))
    assert not torch.equal(a[1], b[1])
    c = score_neurons(model, tokenizer, useful, ScoringConfig(layers=[1], n_samples=4, seed=0))
    d = score_neurons(model, tokenizer, useful, ScoringConfig(layers=[1], n_samples=4, seed=1))
    assert not torch.equal(c[1], d[1])
