import copy

import pytest
import torch

from cku_core import unlearn as unlearn_mod
from cku_core.adapters import MLPAdapter
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.data import encode_examples, iter_batches, pad_id
from cku_core.errors import DataError, InvariantError
from cku_core.losses import sequence_nll, token_kl
from cku_core.methods import METHODS, build_mask, run_method
from cku_core.objectives import ForgetOutputs, OBJECTIVES
from cku_core.tiny import TINY_MODEL_TYPES, tiny_model
from cku_core.unlearn import unlearn


def _mask(model, tokenizer, useful, nlr=0.5, layers=(1, 2)):
    return build_mask(model, tokenizer, useful, ScoringConfig(layers=list(layers), batch_size=4), MaskConfig(nlr=nlr))


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
@pytest.mark.parametrize("scope", ["selected_mlp", "all_mlp", "full"])
def test_locked_and_frozen_entries_are_bit_identical(model_type, scope, tokenizer, useful, forget, fast_unlearn):
    model = tiny_model(model_type)
    original = copy.deepcopy(model.state_dict())
    mask = _mask(model, tokenizer, useful)
    config = fast_unlearn.model_copy(update={"scope": scope, "weight_decay": 0.1})
    report = unlearn(model, tokenizer, forget, useful, config, mask=mask)
    assert report.n_changed > 0 and report.n_locked > 0
    adapter = MLPAdapter(model)
    trainable = unlearn_mod.trainable_parameters(model, adapter, mask.layers, scope)
    locked_checked = 0
    trainable_ids = {id(p) for p in trainable.values()}
    for name, param in model.named_parameters(remove_duplicate=False):   # tied aliases included
        if id(param) not in trainable_ids:
            assert torch.equal(param.detach(), original[name]), f"frozen {name} moved"
    for layer in mask.layers:
        units = mask.locked_units(layer)
        for up in adapter.unit_params(layer):
            idx = up.unit_index(units)
            assert torch.equal(up.param.detach().index_select(up.spec.dim, idx),
                               original[up.name].index_select(up.spec.dim, idx)), f"locked {up.name} moved"
            unlocked = up.unit_index(mask.locked[layer].logical_not().nonzero().flatten())
            assert not torch.equal(up.param.detach().index_select(up.spec.dim, unlocked),
                                   original[up.name].index_select(up.spec.dim, unlocked)), f"{up.name} never trained"
            locked_checked += 1
    assert locked_checked >= 2


def test_invariant_catches_a_pruning_bug(monkeypatch, tokenizer, useful, forget, fast_unlearn):
    monkeypatch.setattr(unlearn_mod, "prune_gradients", lambda slices: None)
    model = tiny_model("llama")
    with pytest.raises(InvariantError, match="locked units moved"):
        unlearn(model, tokenizer, forget, useful, fast_unlearn, mask=_mask(model, tokenizer, useful))


def test_a_run_that_changes_nothing_fails(tokenizer, useful, forget, fast_unlearn):
    model = tiny_model("llama")   # random model: harmful NLL ~6 > lambda, so hinge_ga has nothing to do
    config = fast_unlearn.model_copy(update={"regularizer": None})
    with pytest.raises(InvariantError, match="changed no trainable weight"):
        unlearn(model, tokenizer, forget, useful, config)


def test_hinge_ga_stops_pushing_once_nll_exceeds_lambda():
    nll = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = OBJECTIVES["hinge_ga"].fn(ForgetOutputs(nll, nll * 10), hinge_lambda=1.5)
    loss.backward()
    assert nll.grad.tolist() == [-0.5, 0.0]   # ascent on the first example only
    model_above = torch.tensor([2.0, 3.0], requires_grad=True)
    OBJECTIVES["hinge_ga"].fn(ForgetOutputs(model_above, model_above), hinge_lambda=1.5).backward()
    assert model_above.grad.abs().sum() == 0


def test_hinge_ga_leaves_weights_alone_above_lambda(tokenizer, useful, forget, fast_unlearn):
    model = tiny_model("llama")
    before = copy.deepcopy(model.state_dict())
    config = fast_unlearn.model_copy(update={"regularizer": None, "require_change": False, "hinge_lambda": 1.0})
    report = unlearn(model, tokenizer, forget, useful, config)
    assert report.n_changed == 0 and all(h.harm == 0 for h in report.history)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _nll_and_kl(model, reference, tokenizer, forget, useful):
    def batch(ex):
        return next(iter_batches(encode_examples(tokenizer, ex, 96), 64, pad_id(tokenizer)))
    f, u = batch(forget), batch(useful)
    with torch.no_grad():
        nll = sequence_nll(model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits, f["labels"])[0].mean()
        kl = token_kl(reference(input_ids=u["input_ids"], attention_mask=u["attention_mask"]).logits,
                      model(input_ids=u["input_ids"], attention_mask=u["attention_mask"]).logits, u["labels"])
    return float(nll), float(kl)


def test_toy_cku_raises_harmful_nll_while_kl_stays_small(trained_llama, tokenizer, useful, forget):
    reference = copy.deepcopy(trained_llama)
    nll_before, _ = _nll_and_kl(trained_llama, reference, tokenizer, forget, useful)
    config = UnlearnConfig(lr=3e-3, steps=20, batch_size=4, max_length=96, hinge_lambda=nll_before + 0.6)
    report, mask = run_method("cku", trained_llama, tokenizer, forget=forget, retain=useful, useful=useful,
                              unlearn_cfg=config, scoring_cfg=ScoringConfig(layers=[1, 2]), mask_cfg=MaskConfig(nlr=0.5))
    nll_after, kl = _nll_and_kl(trained_llama, reference, tokenizer, forget, useful)
    assert nll_after > nll_before + 0.2, (nll_before, nll_after)
    assert kl < 0.05, kl
    assert report.history[-1].forget_nll > report.history[0].forget_nll


def test_plain_ga_damages_useful_data_more_than_cku(trained_llama_state, tokenizer, useful, forget):
    kls = {}
    for method in ("cku", "ga"):
        model = tiny_model("llama", num_layers=4, hidden=48, d_ff=96)
        model.load_state_dict(trained_llama_state)
        reference = copy.deepcopy(model)
        run_method(method, model, tokenizer, forget=forget, retain=useful, useful=useful,
                   unlearn_cfg=UnlearnConfig(lr=3e-3, steps=20, batch_size=4, max_length=96, hinge_lambda=2.5),
                   scoring_cfg=ScoringConfig(layers=[1, 2]), mask_cfg=MaskConfig(nlr=0.5))
        kls[method] = _nll_and_kl(model, reference, tokenizer, forget, useful)[1]
    assert kls["cku"] < kls["ga"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_baseline_runs_through_the_same_api(method, trained_llama, tokenizer, useful, forget, fast_unlearn):
    before = copy.deepcopy(trained_llama.state_dict())
    report, mask = run_method(method, trained_llama, tokenizer, forget=forget, retain=useful, useful=useful,
                              unlearn_cfg=fast_unlearn, scoring_cfg=ScoringConfig(layers=[1, 2]))
    changed = any(not torch.equal(v, before[k]) for k, v in trained_llama.state_dict().items())
    if method == "original":
        assert report is None and not changed
        return
    assert changed and report.steps == fast_unlearn.steps
    expect_mask = method.startswith("cku")
    assert (mask is not None) == expect_mask
    if method == "cku_nlr0":
        assert report.n_locked == 0
    if method in ("cku", "cku_random"):
        assert report.n_locked > 0


def test_random_u_has_the_same_size_as_scored_u(trained_llama, tokenizer, useful):
    scored = _mask(trained_llama, tokenizer, useful, nlr=0.8)
    random = build_mask(trained_llama, tokenizer, useful, ScoringConfig(scorer="random", layers=[1, 2]), MaskConfig(nlr=0.8))
    assert {k: int(v.sum()) for k, v in scored.locked.items()} == {k: int(v.sum()) for k, v in random.locked.items()}
    assert any(not torch.equal(scored.locked[k], random.locked[k]) for k in scored.locked)


def test_resume_from_checkpoint_is_bit_identical(trained_llama_state, tokenizer, useful, forget):
    def fresh():
        m = tiny_model("llama", num_layers=4, hidden=48, d_ff=96)
        m.load_state_dict(trained_llama_state)
        return m
    config = UnlearnConfig(lr=1e-3, steps=6, batch_size=4, max_length=96, hinge_lambda=3.0)
    full = fresh()
    mask = _mask(full, tokenizer, useful)
    unlearn(full, tokenizer, forget, useful, config, mask=mask)
    saved = []
    first = fresh()
    unlearn(first, tokenizer, forget, useful, config, mask=mask, checkpoint_every=2,
            on_checkpoint=lambda state: saved.append(copy.deepcopy(state)), max_seconds=0.0)
    assert saved == [] or saved[0]["step"] == 2
    partial = fresh()
    saved.clear()
    unlearn(partial, tokenizer, forget, useful, config.model_copy(update={"steps": 6}), mask=mask, checkpoint_every=2,
            on_checkpoint=lambda state: saved.append(copy.deepcopy(state)))
    resumed = fresh()
    unlearn(resumed, tokenizer, forget, useful, config, mask=mask, resume_state=saved[0])
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_reference_swap_restores_weights_and_gives_original_logits(trained_llama, tokenizer, useful):
    adapter = MLPAdapter(trained_llama)
    trainable = unlearn_mod.trainable_parameters(trained_llama, adapter, [1, 2], "selected_mlp")
    original = unlearn_mod.OriginalWeights(trainable)
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = trained_llama(input_ids=ids).logits
    with torch.no_grad():
        for p in trainable.values():
            p.add_(0.5)
    moved = trained_llama(input_ids=ids).logits
    with original.swapped_in():
        swapped = trained_llama(input_ids=ids).logits
    assert torch.equal(swapped, expected) and not torch.equal(moved, expected)
    assert torch.equal(trained_llama(input_ids=ids).logits, moved)


def test_empty_forget_set_is_a_clear_error(tokenizer, useful, fast_unlearn):
    with pytest.raises(DataError, match="forget set is empty"):
        unlearn(tiny_model("llama"), tokenizer, [], useful, fast_unlearn)


def test_progress_callback_sees_every_step(trained_llama, tokenizer, useful, forget, fast_unlearn):
    seen = []
    unlearn(trained_llama, tokenizer, forget, useful, fast_unlearn, layers=[1], on_step=seen.append)
    assert [s.step for s in seen] == [1, 2, 3, 4] and all(s.total_steps == 4 for s in seen)
    assert all(s.forget_nll > 0 for s in seen)


@pytest.mark.parametrize("update", [{"precision": "bf16"}, {"gradient_checkpointing": True}])
def test_bf16_autocast_and_checkpointing_keep_the_invariant(update, trained_llama, tokenizer, useful, forget, fast_unlearn):
    """The CUDA path (bf16 autocast, checkpointing) is the same code; on CPU autocast runs in bf16 too."""
    mask = _mask(trained_llama, tokenizer, useful)
    dtypes = {n: p.dtype for n, p in trained_llama.named_parameters()}
    report = unlearn(trained_llama, tokenizer, forget, useful, fast_unlearn.model_copy(update=update), mask=mask)
    assert report.n_changed > 0 and report.n_locked > 0      # verify_invariant ran and passed
    assert {n: p.dtype for n, p in trained_llama.named_parameters()} == dtypes   # weights never cast
