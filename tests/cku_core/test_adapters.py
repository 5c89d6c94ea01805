import pytest

from cku_core.adapters import SUPPORTED_MODEL_TYPES, MLPAdapter, default_layers
from cku_core.errors import UnsupportedModelError
from cku_core.tiny import TINY_MODEL_TYPES, tiny_model


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_unit_params_cover_every_unit(model_type):
    model = tiny_model(model_type, d_ff=64)
    adapter = MLPAdapter(model)
    assert adapter.d_ff == 64 and adapter.num_layers == 4
    ups = adapter.unit_params(2)
    roles = {up.spec.role for up in ups}
    assert {"in", "out"} <= roles
    for up in ups:
        assert up.param.shape[up.spec.dim] == 64 * up.spec.blocks
        assert up.name in dict(model.named_parameters())
        assert ".2." in up.name


def test_phi3_fused_gate_up_owns_rows_j_and_j_plus_dff():
    import torch
    adapter = MLPAdapter(tiny_model("phi3", d_ff=64))
    gate_up = next(up for up in adapter.unit_params(0) if "gate_up" in up.name)
    assert gate_up.unit_index(torch.tensor([3])).tolist() == [3, 67]


def test_gpt2_conv1d_is_transposed():
    adapter = MLPAdapter(tiny_model("gpt2", d_ff=64, hidden=32))
    dims = {up.name.rsplit(".", 2)[-2] + "." + up.name.rsplit(".", 1)[-1]: up.spec.dim for up in adapter.unit_params(0)}
    assert dims == {"c_fc.weight": 1, "c_fc.bias": 0, "c_proj.weight": 0}


def test_unsupported_model_names_type_and_lists_supported():
    from transformers import AutoConfig, AutoModelForCausalLM
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "bloom", hidden_size=32, n_layer=2, n_head=4, vocab_size=100))
    with pytest.raises(UnsupportedModelError) as err:
        MLPAdapter(model)
    msg = str(err.value)
    assert "'bloom'" in msg and all(t in msg for t in SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("n, expected", [(32, [8, 9, 10, 11, 12]), (30, [8, 9, 10, 11, 12]), (4, [1]), (1, [0]), (2, [1])])
def test_default_band_is_25_to_40_percent(n, expected):
    assert default_layers(n) == expected
