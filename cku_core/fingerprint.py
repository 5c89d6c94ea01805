"""Content digests: of model weights (the model fingerprint), of tensors, of canonical JSON."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a tensor in its own dtype (bf16 included), on the CPU."""
    flat = t.detach().contiguous().reshape(-1).cpu()
    return memoryview(flat.view(torch.uint8).numpy())


def update_with_tensor(h: "hashlib._Hash", name: str, t: torch.Tensor) -> None:
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
    h.update(tensor_bytes(t))


def tensor_digest(t: torch.Tensor) -> str:
    h = hashlib.sha256()
    update_with_tensor(h, "", t)
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over every weight of the model (name, dtype, shape and bytes, in name order).

    Tied weights are hashed once per name they appear under, which is deterministic for a given
    architecture. Buffers (rotary caches, masks) are excluded: they are derived, not learned.
    """
    h = hashlib.sha256()
    buffers = {name for name, _ in model.named_buffers()}
    for name, p in sorted(model.state_dict(keep_vars=False).items()):
        if name not in buffers:
            update_with_tensor(h, name, p)
    return h.hexdigest()


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace: the form that is hashed for configs and manifests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def json_digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()
