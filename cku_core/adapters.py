"""Architecture adapters: where the MLP "neurons" of each layer live inside a Hugging Face causal LM.

A neuron is intermediate unit j of a layer's MLP. It owns one slice of every MLP parameter that
touches it: for gated MLPs row j of gate_proj and up_proj and column j of down_proj; for GPT-2's
transposed Conv1D column j of c_fc (and bias j) and row j of c_proj; for Phi-3's fused gate_up_proj
rows j and j + d_ff. `UnitSlice` describes one such parameter; everything else (scoring, masks,
gradient pruning, the invariant check) works from these descriptions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cku_core.errors import UnsupportedModelError


@dataclass(frozen=True)
class UnitSlice:
    """One MLP parameter and the axis along which its entries belong to the intermediate units.

    `blocks` > 1 is a fused parameter: unit j owns indices j, j + d_ff, ... along `dim`.
    `role` says what the slice reads: "in" weights read the MLP input (gate/up/fc1), "out" weights
    read the unit's activation (down/fc2), "bias" is the unit's own bias.
    """

    param: str
    dim: int
    role: Literal["in", "out", "bias"]
    blocks: int = 1


@dataclass(frozen=True)
class ArchSpec:
    layers_path: str            # dotted path from the model to the list of decoder layers
    mlp_path: str               # dotted path from a decoder layer to its MLP module ("" = the layer)
    in_modules: tuple[str, ...]  # MLP submodules that read the MLP input (for wanda)
    down_module: str            # MLP submodule whose input is the unit activation a_j
    slices: tuple[UnitSlice, ...]


_GATED = ArchSpec(
    layers_path="model.layers",
    mlp_path="mlp",
    in_modules=("gate_proj", "up_proj"),
    down_module="down_proj",
    slices=(
        UnitSlice("gate_proj.weight", 0, "in"),
        UnitSlice("gate_proj.bias", 0, "bias"),
        UnitSlice("up_proj.weight", 0, "in"),
        UnitSlice("up_proj.bias", 0, "bias"),
        UnitSlice("down_proj.weight", 1, "out"),
    ),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    **{name: _GATED for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3")},
    "gpt2": ArchSpec(
        layers_path="transformer.h",
        mlp_path="mlp",
        in_modules=("c_fc",),
        down_module="c_proj",
        # Conv1D stores weights as [in, out]: the unit axis is transposed w.r.t. nn.Linear.
        slices=(
            UnitSlice("c_fc.weight", 1, "in"),
            UnitSlice("c_fc.bias", 0, "bias"),
            UnitSlice("c_proj.weight", 0, "out"),
        ),
    ),
    "gpt_neox": ArchSpec(
        layers_path="gpt_neox.layers",
        mlp_path="mlp",
        in_modules=("dense_h_to_4h",),
        down_module="dense_4h_to_h",
        slices=(
            UnitSlice("dense_h_to_4h.weight", 0, "in"),
            UnitSlice("dense_h_to_4h.bias", 0, "bias"),
            UnitSlice("dense_4h_to_h.weight", 1, "out"),
        ),
    ),
    "opt": ArchSpec(
        layers_path="model.decoder.layers",
        mlp_path="",
        in_modules=("fc1",),
        down_module="fc2",
        slices=(
            UnitSlice("fc1.weight", 0, "in"),
            UnitSlice("fc1.bias", 0, "bias"),
            UnitSlice("fc2.weight", 1, "out"),
        ),
    ),
    "phi3": ArchSpec(
        layers_path="model.layers",
        mlp_path="mlp",
        in_modules=("gate_up_proj",),
        down_module="down_proj",
        slices=(
            UnitSlice("gate_up_proj.weight", 0, "in", blocks=2),
            UnitSlice("down_proj.weight", 1, "out"),
        ),
    ),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(ARCHITECTURES))


def _get(module: nn.Module, dotted: str) -> nn.Module:
    return module.get_submodule(dotted) if dotted else module


@dataclass(frozen=True)
class UnitParam:
    """A concrete parameter of one layer together with its unit layout."""

    name: str                 # full name as in model.named_parameters()
    param: nn.Parameter
    spec: UnitSlice
    d_ff: int

    def unit_index(self, units: torch.Tensor) -> torch.Tensor:
        """Indices along `spec.dim` owned by `units` (every block of a fused parameter)."""
        units = units.to(device=self.param.device, dtype=torch.long)
        return torch.cat([units + b * self.d_ff for b in range(self.spec.blocks)])

    def per_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor shaped like the parameter over everything but the unit axis -> [d_ff]."""
        dims = [d for d in range(values.dim()) if d != self.spec.dim]
        summed = values.sum(dim=dims) if dims else values
        return summed.reshape(self.spec.blocks, self.d_ff).sum(0)


class MLPAdapter:
    """Uniform access to the MLP units of a supported causal LM."""

    def __init__(self, model: nn.Module) -> None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        spec = ARCHITECTURES.get(model_type)
        if spec is None:
            raise UnsupportedModelError(
                f"model type '{model_type}' is not supported for neuron scoring; "
                f"use one of: {', '.join(SUPPORTED_MODEL_TYPES)} (or add an ArchSpec in cku_core/adapters.py)"
            )
        try:
            layers = _get(model, spec.layers_path)
        except AttributeError as exc:
            raise UnsupportedModelError(
                f"model type '{model_type}' has no decoder layers at '{spec.layers_path}'; "
                "load it with AutoModelForCausalLM (a bare base model or a multimodal wrapper is not supported)"
            ) from exc
        self.model = model
        self.model_type = model_type
        self.spec = spec
        self.layers: list[nn.Module] = list(layers)
        self.d_ff = self._infer_d_ff()

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def mlp(self, layer: int) -> nn.Module:
        return _get(self.layers[layer], self.spec.mlp_path)

    def down_proj(self, layer: int) -> nn.Module:
        return self.mlp(layer).get_submodule(self.spec.down_module)

    def in_projs(self, layer: int) -> list[nn.Module]:
        return [self.mlp(layer).get_submodule(m) for m in self.spec.in_modules]

    def _prefix(self, layer: int) -> str:
        parts = [self.spec.layers_path, str(layer)] + ([self.spec.mlp_path] if self.spec.mlp_path else [])
        return ".".join(parts)

    def unit_params(self, layer: int) -> list[UnitParam]:
        """Every parameter of the layer's MLP that belongs to units, with its unit axis."""
        out = []
        for s in self.spec.slices:
            name = f"{self._prefix(layer)}.{s.param}"
            try:
                param = self.model.get_parameter(name)
            except AttributeError:
                continue  # e.g. a bias the config switched off
            if param is None:
                continue
            out.append(UnitParam(name, param, s, self.d_ff))
        return out

    def mlp_param_names(self, layer: int) -> list[str]:
        """All parameters of the layer's MLP (unit slices and e.g. the output bias of down_proj)."""
        mlp = self.mlp(layer)
        if self.spec.mlp_path:
            return [f"{self._prefix(layer)}.{n}" for n, _ in mlp.named_parameters()]
        modules = set(self.spec.in_modules) | {self.spec.down_module}
        return [f"{self._prefix(layer)}.{n}" for n, _ in mlp.named_parameters() if n.split(".")[0] in modules]

    def _infer_d_ff(self) -> int:
        first = self.spec.slices[0]
        name = f"{self._prefix(0)}.{first.param}"
        param = self.model.get_parameter(name)
        return param.shape[first.dim] // first.blocks


def default_layers(num_layers: int) -> list[int]:
    """The paper's best band, MLP layers 8-12 of 32, as the same relative band 25%-40% of depth.

    32 layers -> 8..12; 30 layers (SmolLM2-135M) -> 8..12; 4 layers -> [1]. Never empty.
    """
    import math

    start, end = math.ceil(0.25 * num_layers), math.floor(0.40 * num_layers)
    if end < start:
        return [min(round(0.325 * num_layers), num_layers - 1)]
    return list(range(start, end + 1))
