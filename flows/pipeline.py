"""`cku-pipeline`: one method (CKU by default) from model to recorded results.

    model ─► data ─► [align] ─► original-model reference (KL baseline, knowledge references) ────────┐
                 └─► training examples ─► [scores ─► retained set U] ─► unlearn ─► evaluate ◄─┘ ─► record

With `align.enabled`, the raw model is first safety fine-tuned (tasks/align.py) and the aligned model
is "the original" of every later stage: the method starts from a model that refuses direct requests.
The training examples' missing responses and the knowledge judges' references still come from the
raw model: its harmful answers are the knowledge that alignment hides and unlearning has to remove
(the aligned model would only refuse).

Every expensive stage is a cached task keyed by content (tasks/_stage.py), so a rerun, a sweep or
a baseline comparison only computes what changed. Stages are called directly, one after another:
each one saturates the device anyway, and a task in a worker thread could not be interrupted.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from cku_core.align import AlignConfig, check_align
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.fingerprint import json_digest
from cku_core.generation import GenSettings
from cku_core.methods import get_method, method_configs
from cku_core.preflight import preflight_run
from flows._runs import RunLog, close_run, open_run, record_failure
from tasks.align import align_stage
from tasks.data import prepare_data, prepare_examples
from tasks.evaluate import evaluate_stage, reference_stage
from tasks.handoff import unlearn_on_deployment
from tasks.mask import mask_stage
from tasks.model import prepare_model
from tasks.params import ModelConfig, RunOptions
from tasks.record import record_results
from tasks.scoring import score_stage
from tasks.unlearn import unlearn_stage


def run_config(**params: Any) -> dict[str, Any]:
    """The run's parameters as plain JSON (what `runs.config` stores and `config_digest` hashes)."""
    return {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v for k, v in params.items()}


def prepare_inputs(log: RunLog, model: ModelConfig, data: SplitConfig, evaluation: EvalConfig,
                   options: RunOptions, align: AlignConfig | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Model (aligned when `align.enabled`), splits and that model's reference outputs: what every
    evaluation needs. An aligned model's output carries the raw one under `raw_model`."""
    m = log.stage(prepare_model, model)
    d = log.stage(prepare_data, data)
    if align is not None and align.enabled:
        m = {**log.stage(align_stage, m, d, align, device=options.device), "raw_model": m}
    log.model_digest, log.data_digest = m["info"]["fingerprint"], d["info"]["data_digest"]
    ref = log.stage(reference_stage, m, d, evaluation, device=options.device, knowledge_model=m.get("raw_model"))
    return m, d, ref


def training_examples(log: RunLog, m: dict[str, Any], d: dict[str, Any], evaluation: EvalConfig,
                      options: RunOptions) -> dict[str, Any]:
    """Forget and useful pairs; prompts without a response get the greedy answer of the model before
    alignment (the raw model when `m` is an aligned one)."""
    settings = GenSettings(max_new_tokens=evaluation.max_new_tokens, seed=evaluation.seed)
    return log.stage(prepare_examples, m.get("raw_model", m), d, settings, evaluation.batch_size, device=options.device)


@flow(name="cku-pipeline", on_failure=[record_failure], on_crashed=[record_failure])
def cku_pipeline(
    model: ModelConfig = ModelConfig(),
    data: SplitConfig = SplitConfig(),
    scoring: ScoringConfig = ScoringConfig(),
    mask: MaskConfig = MaskConfig(),
    unlearn: UnlearnConfig = UnlearnConfig(),
    evaluation: EvalConfig = EvalConfig(),
    method: str = "cku",
    band: list[int] | None = None,
    options: RunOptions = RunOptions(),
    align: AlignConfig = AlignConfig(),
) -> dict[str, Any]:
    """Unlearn with one method and evaluate the result; returns the run id and headline metrics.

    `method`: cku (default), cku_random, cku_nlr0, ga, graddiff, npo or original (see cku_core.methods).
    `band`: layers of the retained set and of training (None = the scored layers, `scoring.layers`).
    `align`: safety fine-tune of the raw model first (on the data's align splits); off = the raw model.
    """
    get_method(method)  # an unknown method fails before any work
    check_align(align, data.n_align_harmful)
    preflight_run(model=model, data=data, scoring=scoring, mask=mask, unlearn=unlearn, method=method, band=band)
    log = open_run(method, run_config(model=model, data=data, scoring=scoring, mask=mask, unlearn=unlearn,
                                      evaluation=evaluation, method=method, band=band, options=options, align=align))
    m, d, ref = prepare_inputs(log, model, data, evaluation, options, align)
    u_cfg, s_cfg, m_cfg = method_configs(method, unlearn, scoring, mask)
    layers = band if band is not None else scoring.layers

    retained = None
    ex = training_examples(log, m, d, evaluation, options) if u_cfg is not None else None
    if s_cfg is not None and m_cfg is not None:
        scores = log.stage(score_stage, m, ex, s_cfg, device=options.device)
        retained = log.stage(mask_stage, m, scores, m_cfg, layers)
    checkpoint = m
    if u_cfg is not None and options.unlearn_deployment:  # on a GPU worker, read back from the store
        checkpoint = log.stage(unlearn_on_deployment, options.unlearn_deployment, m, ex, u_cfg, retained, layers,
                               options.max_unlearn_seconds, checkpoint_every=options.checkpoint_every)
    elif u_cfg is not None:
        checkpoint = log.stage(unlearn_stage, m, ex, u_cfg, retained, layers, options.max_unlearn_seconds,
                               checkpoint_every=options.checkpoint_every)
    evaluated = log.stage(evaluate_stage, checkpoint, d, ref, evaluation, options.judge_model, device=options.device)

    provenance = {"model_digest": checkpoint["info"]["fingerprint"], "data_digest": log.data_digest,
                  "config_digest": json_digest(log.config)}
    record_results(log.run_id, method, log.stages, evaluated, retained, provenance)
    close_run(log)
    return {"run_id": log.run_id, "name": log.name, "method": method, "checkpoint": checkpoint["ref"],
            "headline": evaluated["info"]["headline"],
            "cached": {s["stage"]: s["cached"] for s in log.stages},
            "states": {s["stage"]: s["prefect_state"] == "Cached" for s in log.stages}}
