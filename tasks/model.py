"""Stage `model`: resolve a model spec once into a loadable folder, and fingerprint its weights.

The artifact holds `info.json` (spec, folder, fingerprint, architecture facts) and, when the model
is not already a local safetensors folder, the folder itself under `hf/`: a GGUF file is
dequantized into it once (transformers cannot save GGUF-loaded models), a `tiny:` model is built
into it. Checkpoints written by the unlearning stage use the same layout, so every later stage
loads "a model artifact" the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task

from cku_core.delta import apply_delta
from cku_core.errors import ConfigError
from cku_core.fingerprint import json_digest, model_fingerprint
from cku_core.models import (
    convert_gguf_to_safetensors,
    file_sha256,
    load_model_and_tokenizer,
    parse_model_spec,
)
from cku_core.store import ArtifactRef, ArtifactStore, Provenance
from tasks._stage import (
    CACHED_TASK_OPTIONS,
    RETRY_OPTIONS,
    Timer,
    cache_key_fn,
    output,
    stage_key,
    transient_failure,
)
from tasks.params import ModelConfig

STAGE, VERSION = "model", "1"
INFO = "info.json"
HF_DIR = "hf"
DELTA_FILE = "delta.safetensors"
TINY_PREFIX = "tiny:"


def source_digest(spec: str) -> str:
    """What identifies the model's bytes before loading it (cheap enough to run in a cache key)."""
    if spec.startswith(TINY_PREFIX):
        from cku_core.tiny import tiny_config

        return json_digest({"tiny": spec, "config": tiny_config(spec[len(TINY_PREFIX):]).to_dict()})
    src = parse_model_spec(spec)
    if src.kind == "gguf" and src.path is not None:
        return file_sha256(src.path)
    if src.path is not None and Path(src.path).is_dir():
        # Names, sizes and modification times: hashing many GB of weights on every lookup is too slow,
        # and a rewritten file changes its mtime. The weight fingerprint is recorded when the stage runs.
        h = hashlib.sha256()
        for f in sorted(p for p in Path(src.path).rglob("*") if p.is_file()):
            st = f.stat()
            h.update(f"{f.relative_to(src.path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return json_digest({"hub": spec})


def _extra(parameters: Mapping[str, Any]) -> dict[str, Any]:
    config = ModelConfig.model_validate(parameters["config"])
    return {"source": source_digest(config.spec)}


def describe(model: Any) -> dict[str, Any]:
    from cku_core.adapters import MLPAdapter

    adapter = MLPAdapter(model)
    return {"model_type": model.config.model_type, "num_layers": adapter.num_layers, "d_ff": adapter.d_ff,
            "n_params": sum(p.numel() for p in model.parameters())}


def write_model_info(folder: Path, model: Any, spec: str, model_dir: str, **extra: Any) -> dict[str, Any]:
    """info.json of a model artifact; `model_dir` is relative to the artifact when it lives inside it."""
    info = {"spec": spec, "model_dir": model_dir, "fingerprint": model_fingerprint(model), **describe(model), **extra}
    (folder / INFO).write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    return info


def _build(folder: Path, config: ModelConfig) -> None:
    spec = config.spec
    if spec.startswith(TINY_PREFIX):
        from cku_core.tiny import tiny_model, tiny_tokenizer

        model, tok = tiny_model(spec[len(TINY_PREFIX):]), tiny_tokenizer()
        model.save_pretrained(folder / HF_DIR)
        tok.save_pretrained(folder / HF_DIR)
        write_model_info(folder, model, spec, HF_DIR)
        return
    src = parse_model_spec(spec)
    if src.kind == "gguf":
        assert src.path is not None
        convert_gguf_to_safetensors(src.path, folder / HF_DIR)
        model_dir = HF_DIR
        load_from: str | Path = folder / HF_DIR
    else:
        model_dir = load_from = spec  # used in place: a local folder or the hub cache
    model, _tok = load_model_and_tokenizer(load_from, dtype=config.dtype, device="cpu",
                                           trust_remote_code=config.trust_remote_code, require_supported=True)
    write_model_info(folder, model, spec, str(model_dir))


@task(name="load-model", cache_key_fn=cache_key_fn(STAGE, VERSION, _extra),
      **{**CACHED_TASK_OPTIONS, **RETRY_OPTIONS}, retry_condition_fn=transient_failure)
def prepare_model(config: ModelConfig) -> dict[str, Any]:
    """Resolve and fingerprint the model (cached by the model file's digest and the load options)."""
    config = ModelConfig.model_validate(config)
    key = stage_key(STAGE, VERSION, {"config": config}, _extra)
    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            STAGE, key, lambda folder: _build(folder, config), stage_version=VERSION,
            provenance=Provenance(config_digest=json_digest(config.model_dump(mode="json"))))
    info = read_info(artifact.path)
    return output(STAGE, artifact.ref(), t.seconds, info, version=VERSION, reused=reused)


def write_delta_info(folder: Path, model: Any, base_ref: Mapping[str, Any], base_info: Mapping[str, Any]) -> dict[str, Any]:
    """info.json of a checkpoint: the base model artifact plus `delta.safetensors` on top of it."""
    info = {"spec": base_info["spec"], "base": dict(base_ref), "delta": DELTA_FILE,
            "base_fingerprint": base_info["fingerprint"], "fingerprint": model_fingerprint(model), **describe(model)}
    (folder / INFO).write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
    return info


# ------------------------------------------------------------------ loading a model artifact
def read_info(folder: Path) -> dict[str, Any]:
    return json.loads((folder / INFO).read_text(encoding="utf-8"))


def model_location(ref: ArtifactRef | Mapping[str, Any]) -> tuple[str | Path, dict[str, Any]]:
    """(folder or hub id to load, info.json) of a model or checkpoint artifact."""
    artifact = ArtifactStore().open_ref(ref)
    info = read_info(artifact.path)
    model_dir = info["model_dir"]
    location: str | Path = artifact.path / model_dir if not os.path.isabs(model_dir) and \
        (artifact.path / model_dir).is_dir() else model_dir
    return location, info


def load_model_artifact(ref: ArtifactRef | Mapping[str, Any], device: str = "cpu",
                        trust_remote_code: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) from a model/checkpoint artifact, in eval mode on `device`."""
    from cku_core.device import resolve_device

    artifact = ArtifactStore().open_ref(ref)
    info = read_info(artifact.path)
    if "delta" in info:  # a checkpoint: its base model plus the unlearned tensors
        model, tok, _ = load_model_artifact(info["base"], device=device, trust_remote_code=trust_remote_code)
        apply_delta(model, artifact.path / info["delta"])
        location: str | Path = artifact.path
    else:
        location, info = model_location(ref)
        model, tok = load_model_and_tokenizer(location, device=resolve_device(device),
                                              trust_remote_code=trust_remote_code)
    if model_fingerprint(model) != info["fingerprint"]:
        raise ConfigError(f"the weights in {location} no longer match fingerprint {info['fingerprint'][:12]} "
                          "recorded by the model stage; rerun the flow so the stage recomputes")
    return model, tok, info
