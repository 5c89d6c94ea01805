"""The retained set U: per selected layer, the top ceil(NLR * d_ff) units by score are locked.

U is saved as safetensors (`locked.<layer>` bool [d_ff] and `scores.<layer>` float32 [d_ff]) with
string metadata (model fingerprint, model type, d_ff, layers, NLR, scorer, data digest, code
version). Loading U onto a model with another fingerprint or other shapes is an error.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cku_core.adapters import MLPAdapter
from cku_core.errors import MaskError
from cku_core.version import CODE_VERSION

MASK_FORMAT = "cku-retained-set/1"


def top_units(scores: torch.Tensor, nlr: float) -> torch.Tensor:
    """Bool [d_ff]: the top ceil(nlr * d_ff) units, ties broken by the lower index."""
    d_ff = scores.numel()
    k = math.ceil(round(nlr * d_ff, 9))  # round() so 0.8 * 10 is 8, not 9 through float error
    # A stable sort on -score keeps index order among equal scores.
    order = torch.sort(-scores.float(), stable=True).indices
    locked = torch.zeros(d_ff, dtype=torch.bool)
    locked[order[:k]] = True
    return locked


@dataclass
class RetainedSet:
    locked: dict[int, torch.Tensor]               # layer -> bool [d_ff]
    scores: dict[int, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.locked)

    def locked_units(self, layer: int) -> torch.Tensor:
        """Long tensor of the locked unit indices of `layer` (empty for an unselected layer)."""
        if layer not in self.locked:
            return torch.zeros(0, dtype=torch.long)
        return self.locked[layer].nonzero().flatten()

    def stats(self) -> list[dict[str, float | int]]:
        """Per-layer statistics for the results store."""
        rows = []
        for layer in self.layers:
            s = self.scores.get(layer)
            rows.append({
                "layer": layer,
                "d_ff": int(self.locked[layer].numel()),
                "n_locked": int(self.locked[layer].sum()),
                "score_mean": float(s.mean()) if s is not None else None,
                "score_min_locked": float(s[self.locked[layer]].min()) if s is not None and self.locked[layer].any() else None,
                "score_max_unlocked": float(s[~self.locked[layer]].max()) if s is not None and (~self.locked[layer]).any() else None,
            })
        return rows

    # --- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically: a reader sees either no file or the complete file."""
        path = Path(path)
        tensors = {f"locked.{layer}": t.to(torch.bool).contiguous() for layer, t in self.locked.items()}
        tensors.update({f"scores.{layer}": t.float().contiguous() for layer, t in self.scores.items()})
        meta = {"format": MASK_FORMAT, **{k: str(v) for k, v in self.metadata.items()}}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RetainedSet":
        path = Path(path)
        if not path.is_file():
            raise MaskError(f"mask file {path} does not exist; run the mask stage first or check the path")
        try:
            tensors = load_file(str(path))
            with open(path, "rb") as fh:
                header_len = int.from_bytes(fh.read(8), "little")
                meta = json.loads(fh.read(header_len)).get("__metadata__", {})
        except (SafetensorError, ValueError, OSError) as exc:
            raise MaskError(
                f"mask file {path} is truncated or corrupted ({exc}); delete it and recompute the mask stage"
            ) from None
        if meta.get("format") != MASK_FORMAT:
            raise MaskError(f"{path} is not a cku mask file (format {meta.get('format')!r}); pass a file written by cku")
        locked = {int(k.split(".")[1]): v.bool() for k, v in tensors.items() if k.startswith("locked.")}
        scores = {int(k.split(".")[1]): v for k, v in tensors.items() if k.startswith("scores.")}
        return cls(locked=locked, scores=scores, metadata=meta)

    def check_compatible(self, model: nn.Module, fingerprint: str | None = None) -> None:
        """Raise MaskError unless U was computed for exactly this model (fingerprint and shapes)."""
        adapter = MLPAdapter(model)
        expected_fp = self.metadata.get("model_fingerprint")
        if fingerprint is not None and expected_fp and expected_fp != fingerprint:
            raise MaskError(
                f"mask was computed for model {expected_fp[:12]} but this model is {fingerprint[:12]}; "
                "recompute the mask for this model"
            )
        for layer, t in self.locked.items():
            if not 0 <= layer < adapter.num_layers:
                raise MaskError(
                    f"mask locks layer {layer} but the model has {adapter.num_layers} layers; recompute the mask for this model"
                )
            if t.numel() != adapter.d_ff:
                raise MaskError(
                    f"mask layer {layer} has {t.numel()} units but the model's MLP has {adapter.d_ff}; "
                    "recompute the mask for this model"
                )


def select_retained(scores: dict[int, torch.Tensor], nlr: float, *, metadata: dict[str, str] | None = None) -> RetainedSet:
    """U from per-layer scores: the top ceil(NLR * d_ff) units of every scored layer."""
    if not 0.0 <= nlr <= 1.0:
        raise MaskError(f"NLR must be within [0, 1], got {nlr}; e.g. 0.8 locks 80% of each layer's units")
    locked = {layer: top_units(s, nlr) for layer, s in scores.items()}
    meta = {"nlr": repr(nlr), "layers": json.dumps(sorted(scores)), "code_version": CODE_VERSION, **(metadata or {})}
    return RetainedSet(locked=locked, scores={k: v.float() for k, v in scores.items()}, metadata=meta)
