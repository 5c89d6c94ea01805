"""One documented pydantic config per stage.

Every field has a description (it becomes the Prefect UI form), unknown keys are rejected
(`extra="forbid"`), and `canonical_json()` is what stage cache keys hash. Fields marked
"reconstruction" are choices the paper does not pin down (see docs of cku-method); the default is
the documented best guess and each alternative stays switchable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cku_core.fingerprint import canonical_json, json_digest


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def canonical_json(self) -> str:
        return canonical_json(self.model_dump(mode="json"))

    def digest(self) -> str:
        return json_digest(self.model_dump(mode="json"))


class ScoringConfig(StageConfig):
    """How neurons are scored on useful (benign) data."""

    scorer: str = Field("grad_x_act", description=(
        "Neuron importance score: grad_x_act (|a * dL/da|, default), activation (mean |a|, forward only), "
        "wanda (|W| * ||x||, unit-aggregated), snip (|W * dL/dW|, unit-aggregated), random (control)."))
    layers: list[int] | None = Field(None, description=(
        "0-indexed MLP layers to score and lock. None = the paper's band (8-12 of 32) as the same "
        "relative band, 25%-40% of depth."))
    n_samples: int = Field(128, ge=1, description="Useful samples used for scoring (N_id; paper-style default 128).")
    batch_size: int = Field(8, ge=1, description="Scoring batch size (scores do not depend on it).")
    max_length: int = Field(512, ge=8, description="Token budget per prompt+response during scoring.")
    seed: int = Field(0, description="Localization seed: sample selection and the random scorer.")


class MaskConfig(StageConfig):
    """How the retained set U is chosen from the scores."""

    nlr: float = Field(0.8, description="Neuron Locking Ratio: fraction of units per layer that are locked (paper: 0.8).")

    @field_validator("nlr")
    @classmethod
    def _nlr_in_unit_interval(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"nlr must be within [0, 1], got {v}; e.g. 0.8 locks 80% of each layer's units")
        return v


class UnlearnConfig(StageConfig):
    """Masked unlearning: L = L_harm + beta * L_reg with locked units' gradients pruned."""

    objective: str = Field("hinge_ga", description=(
        "Forget loss: hinge_ga (max(0, lambda - NLL), default; reconstruction), ga (-NLL), npo (NPO vs the original)."))
    regularizer: str | None = Field("kl_ref", description=(
        "Retain term on useful data: kl_ref (token KL(p_original || p_current), default), retain_ce (GradDiff), "
        "or null for none."))
    hinge_lambda: float = Field(1.5, gt=0, description="lambda of hinge_ga: ascent stops once a harmful response's per-token NLL exceeds it.")
    beta: float = Field(1.0, ge=0, description="Weight of the regularizer.")
    npo_beta: float = Field(0.1, gt=0, description="Inverse temperature of the NPO loss.")
    scope: Literal["selected_mlp", "all_mlp", "full"] = Field("selected_mlp", description=(
        "Trainable parameters: the MLPs of the selected layers (default), every MLP, or the whole model; "
        "locked units are excluded in every case."))
    lr: float = Field(4e-6, gt=0, description="AdamW learning rate (paper: 4e-6 for a 7B model; small models need more).")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; None = `epochs` passes over the forget set.")
    epochs: int = Field(1, ge=1, description="Passes over the forget set when `steps` is None.")
    batch_size: int = Field(4, ge=1, description="Forget examples per step; the same number of useful examples is drawn for the regularizer.")
    max_length: int = Field(2048, ge=8, description="Token budget per prompt+response.")
    weight_decay: float = Field(0.0, ge=0, description=(
        "AdamW decoupled weight decay, applied only to tensors without locked entries (decay would move locked weights)."))
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm (None = off). Pruned entries stay zero.")
    seed: int = Field(42, description="Training seed: batch order and any sampling.")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description=(
        "Compute precision; auto = bf16 autocast on CUDA, fp32 on CPU. Weights stay in their stored dtype."))
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on large models.")
    require_change: bool = Field(True, description="Fail if no trainable entry changed (a run that did nothing).")

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        from cku_core.objectives import OBJECTIVES
        if v not in OBJECTIVES:
            raise ValueError(f"unknown objective '{v}'; choose one of: {', '.join(sorted(OBJECTIVES))}")
        return v

    @field_validator("regularizer")
    @classmethod
    def _known_regularizer(cls, v: str | None) -> str | None:
        from cku_core.objectives import REGULARIZERS
        if v is not None and v not in REGULARIZERS:
            raise ValueError(f"unknown regularizer '{v}'; choose one of: {', '.join(sorted(REGULARIZERS))} or null")
        return v
