import math

import pytest
import torch

from cku_core.errors import MaskError
from cku_core.fingerprint import model_fingerprint
from cku_core.masks import RetainedSet, select_retained, top_units
from cku_core.tiny import tiny_model


@pytest.mark.parametrize("nlr", [0.0, 0.2, 0.5, 0.8, 0.95, 1.0, 0.33])
@pytest.mark.parametrize("d_ff", [64, 96, 10, 7])
def test_exact_u_size(nlr, d_ff):
    locked = top_units(torch.rand(d_ff), nlr)
    assert int(locked.sum()) == math.ceil(round(nlr * d_ff, 9))


def test_top_units_picks_highest_and_breaks_ties_by_index():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.5, 0.0])
    assert top_units(scores, 0.5).nonzero().flatten().tolist() == [1, 2, 3]


def test_safetensors_round_trip_with_metadata(tmp_path):
    scores = {1: torch.rand(64), 2: torch.rand(64)}
    u = select_retained(scores, 0.8, metadata={"model_fingerprint": "abc", "model_type": "llama", "d_ff": "64",
                                               "scorer": "grad_x_act", "data_digest": "d1"})
    path = u.save(tmp_path / "mask.safetensors")
    back = RetainedSet.load(path)
    assert back.layers == [1, 2]
    for layer in (1, 2):
        assert torch.equal(back.locked[layer], u.locked[layer])
        assert torch.equal(back.scores[layer], scores[layer])
    for key in ("model_fingerprint", "model_type", "d_ff", "layers", "nlr", "scorer", "data_digest", "code_version"):
        assert key in back.metadata
    assert back.metadata["nlr"] == "0.8" and back.metadata["layers"] == "[1, 2]"
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_fingerprint_mismatch_is_an_error(tmp_path):
    model = tiny_model("llama", seed=0)
    other = tiny_model("llama", seed=1)
    u = select_retained({1: torch.rand(64)}, 0.5, metadata={"model_fingerprint": model_fingerprint(model)})
    u.check_compatible(model, model_fingerprint(model))
    with pytest.raises(MaskError, match="recompute the mask"):
        u.check_compatible(other, model_fingerprint(other))


def test_shape_mismatch_is_an_error():
    u = select_retained({1: torch.rand(32)}, 0.5)
    with pytest.raises(MaskError, match="has 32 units but the model's MLP has 64"):
        u.check_compatible(tiny_model("llama"))
    with pytest.raises(MaskError, match="layers"):
        select_retained({9: torch.rand(64)}, 0.5).check_compatible(tiny_model("llama"))


def test_truncated_file_is_a_clear_error(tmp_path):
    path = select_retained({1: torch.rand(64)}, 0.5).save(tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(MaskError, match="truncated or corrupted"):
        RetainedSet.load(path)


@pytest.mark.parametrize("nlr", [-0.1, 1.5])
def test_nlr_outside_unit_interval(nlr):
    with pytest.raises(MaskError, match=r"within \[0, 1\]"):
        select_retained({0: torch.rand(8)}, nlr)


def test_fingerprint_changes_with_one_weight():
    a = tiny_model("llama")
    fp = model_fingerprint(a)
    assert fp == model_fingerprint(tiny_model("llama"))
    with torch.no_grad():
        next(a.parameters()).view(-1)[0] += 1e-3
    assert model_fingerprint(a) != fp
