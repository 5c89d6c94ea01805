import pytest
import torch

from cku_core.config import UnlearnConfig
from cku_core.delta import apply_delta, save_delta
from cku_core.errors import MaskError
from cku_core.fingerprint import model_fingerprint
from cku_core.tiny import tiny_model
from cku_core.unlearn import unlearn


def test_base_plus_delta_reproduces_the_unlearned_model(tmp_path, tokenizer, useful, forget):
    model = tiny_model("llama")
    report = unlearn(model, tokenizer, forget, useful, UnlearnConfig(objective="ga", lr=1e-3, steps=2, max_length=64),
                     layers=[1, 2])
    assert report.trainable_names and all(".mlp." in n for n in report.trainable_names)
    path = save_delta(model, report.trainable_names, tmp_path / "delta.safetensors")
    rebuilt = tiny_model("llama")
    assert model_fingerprint(rebuilt) != model_fingerprint(model)
    assert apply_delta(rebuilt, path) == report.trainable_names
    assert model_fingerprint(rebuilt) == model_fingerprint(model)


def test_delta_for_another_model_is_refused(tmp_path):
    path = save_delta(tiny_model("llama", d_ff=64), ["model.layers.1.mlp.up_proj.weight"], tmp_path / "d.safetensors")
    with pytest.raises(MaskError, match="another model"):
        apply_delta(tiny_model("llama", d_ff=96), path)
    with pytest.raises(MaskError, match="lacks"):
        apply_delta(tiny_model("gpt2"), path)


def test_truncated_delta_is_a_clear_error(tmp_path):
    path = save_delta(tiny_model("llama"), ["model.layers.1.mlp.up_proj.weight"], tmp_path / "d.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MaskError, match="truncated or corrupted"):
        apply_delta(tiny_model("llama"), path)
