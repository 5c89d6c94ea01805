"""Device and precision: one code path for CPU and CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from cku_core.errors import ConfigError


def resolve_device(setting: str = "auto") -> torch.device:
    """`auto` -> the first CUDA device when present, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{setting}' was requested but CUDA is not available; use device 'auto' or 'cpu'")
    return device


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. Weights are never cast: locked entries stay exact."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "auto") -> Iterator[None]:
    dtype = compute_dtype(device, precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
