"""`cku-evaluate`: evaluation only. Attack, judge and utility-test the original model, or an
unlearned checkpoint artifact (by its key, from `cku query "SELECT key FROM stages WHERE stage = 'checkpoint'"`),
against the original model's reference. Nothing is trained.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from cku_core.align import AlignConfig, check_align
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.fingerprint import json_digest
from cku_core.preflight import preflight_run
from cku_core.store import ArtifactStore
from flows._runs import close_run, open_run, record_failure
from flows.pipeline import prepare_inputs, run_config
from tasks.evaluate import evaluate_stage
from tasks.model import read_info
from tasks.params import ModelConfig, RunOptions
from tasks.record import record_results


def checkpoint_output(key: str) -> dict[str, Any]:
    """A stage output for an existing checkpoint artifact (fails clearly when it is gone)."""
    artifact = ArtifactStore().open("checkpoint", key)
    return {"stage": "checkpoint", "version": artifact.manifest.stage_version, "key": key,
            "ref": artifact.ref().model_dump(mode="json"), "computed_seconds": 0.0, "reused": True,
            "info": read_info(artifact.path)}


@flow(name="cku-evaluate", on_failure=[record_failure], on_crashed=[record_failure])
def cku_evaluate(
    model: ModelConfig = ModelConfig(),
    checkpoint: str | None = None,
    data: SplitConfig = SplitConfig(),
    evaluation: EvalConfig = EvalConfig(),
    label: str = "original",
    options: RunOptions = RunOptions(),
    align: AlignConfig = AlignConfig(),
) -> dict[str, Any]:
    """Evaluate `checkpoint` (an artifact key; None = the original `model`); `label` is the method column.

    `align`: the safety fine-tune the checkpoint's run started from; its aligned model is then the
    original (the reference, and what is evaluated when no checkpoint is given)."""
    preflight_run(model=model, data=data, checkpoint=checkpoint)
    check_align(align, data.n_align_harmful)
    log = open_run(label, run_config(model=model, checkpoint=checkpoint, data=data, evaluation=evaluation,
                                     label=label, options=options, align=align))
    m, d, ref = prepare_inputs(log, model, data, evaluation, options, align)
    target = checkpoint_output(checkpoint) if checkpoint else m
    evaluated = log.stage(evaluate_stage, target, d, ref, evaluation, options.judge_model, device=options.device)
    provenance = {"model_digest": target["info"]["fingerprint"], "data_digest": log.data_digest,
                  "config_digest": json_digest(log.config)}
    record_results(log.run_id, label, log.stages, evaluated, None, provenance)
    close_run(log)
    return {"run_id": log.run_id, "name": log.name, "headline": evaluated["info"]["headline"]}
