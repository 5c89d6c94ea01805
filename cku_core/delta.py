"""Unlearned checkpoints as deltas: only the tensors the run could change, as safetensors.

Unlearning trains a small scope (by default the MLPs of five layers), so a checkpoint is the base
model plus those tensors: ~60 MB instead of 540 MB for SmolLM2-135M, and the frozen weights are
provably the base model's (the fingerprint of base + delta is checked on load).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cku_core.errors import MaskError


def save_delta(model: nn.Module, names: Iterable[str], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the named parameters (their current values, own dtype) to a safetensors file."""
    tensors = {name: model.get_parameter(name).detach().contiguous().cpu() for name in sorted(set(names))}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return Path(path)


def apply_delta(model: nn.Module, path: str | Path) -> list[str]:
    """Overwrite the model's parameters with the tensors of a delta file; returns their names."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise MaskError(f"checkpoint delta {path} is truncated or corrupted ({exc}); delete the artifact and rerun") from None
    with torch.no_grad():
        for name, value in tensors.items():
            try:
                param = model.get_parameter(name)
            except AttributeError:
                raise MaskError(f"checkpoint delta {path} has tensor {name!r} that this model lacks; "
                                "it was written for another architecture") from None
            if param.shape != value.shape or param.dtype != value.dtype:
                raise MaskError(f"checkpoint delta tensor {name!r} is {tuple(value.shape)}/{value.dtype} but the model's "
                                f"is {tuple(param.shape)}/{param.dtype}; it was written for another model")
            param.copy_(value.to(param.device))
    return sorted(tensors)
