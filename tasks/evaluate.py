"""Stages `reference` (what the original model says, once) and `evaluation` (attack, judge, utility).

Both wrap cku_core.eval: `compute_reference` on the original model, then `evaluate_model` on each
model to compare. The evaluation artifact keeps every response row and metric row as JSON, so the
results store can be rebuilt from artifacts alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from cku_core.eval.config import EvalConfig
from cku_core.eval.data import EvalData, load_eval_data
from cku_core.eval.reference import ReferenceOutputs, compute_reference, knowledge_references
from cku_core.eval.runner import evaluate_model
from cku_core.eval.sources import DataRecord
from cku_core.eval.splits import SplitConfig, Splits
from cku_core.store import ArtifactRef, ArtifactStore, Provenance
from tasks._progress import StageProgress
from tasks._stage import CACHED_TASK_OPTIONS, GPU_TAG, Timer, cache_key_fn, output, stage_key
from tasks.data import load_splits
from tasks.model import load_model_artifact

REFERENCE_STAGE, REFERENCE_VERSION = "reference", "2"  # 2: knowledge references may come from the raw model
EVAL_STAGE, EVAL_VERSION = "evaluation", "1"
REFERENCE_FILE = "reference.pt"
ROWS_FILE = "responses.jsonl"
METRICS_FILE = "metrics.json"


def splits_from_artifact(ref: ArtifactRef | Mapping[str, Any]) -> Splits:
    """The Splits object stored by the data stage."""
    raw = load_splits(ref)

    def records(name: str) -> list[DataRecord]:
        return [DataRecord(**{**r, "choices": tuple(r["choices"]) if r.get("choices") else None})
                for r in raw["splits"][name]]

    return Splits(forget=records("forget"), eval_harmful=records("eval_harmful"), scoring=records("scoring"),
                  eval_benign=records("eval_benign"), sources=raw["sources"],
                  config=SplitConfig.model_validate(raw["config"]), digest=raw["digest"])


def eval_data(data: Mapping[str, Any], config: EvalConfig) -> EvalData:
    return load_eval_data(splits_from_artifact(data["ref"]), config)


@task(name="original-reference", tags=[GPU_TAG],
      cache_key_fn=cache_key_fn(REFERENCE_STAGE, REFERENCE_VERSION), **CACHED_TASK_OPTIONS)
def reference_stage(model: dict[str, Any], data: dict[str, Any], config: EvalConfig, device: str = "auto",
                    knowledge_model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Greedy answers and top-k log-probs of the ORIGINAL model: KL baseline and knowledge references.

    `knowledge_model` (the raw model, when `model` is its aligned version) gives the harmful
    answers instead: an aligned model refuses, so its own answers would leave the knowledge and
    embedding judges without references. It is loaded first and freed before the original.
    """
    config = EvalConfig.model_validate(config)
    key = stage_key(REFERENCE_STAGE, REFERENCE_VERSION, {"model": model, "data": data, "config": config,
                                                         "knowledge_model": knowledge_model})

    def write(folder: Path) -> None:
        data_view, knowledge = eval_data(data, config), None
        if knowledge_model is not None:
            raw, raw_tok, _ = load_model_artifact(knowledge_model["ref"], device=device)
            knowledge = knowledge_references(raw, raw_tok, data_view, config, source="model before alignment")
            del raw, raw_tok  # two models never sit in memory together
        lm, tok, _info = load_model_artifact(model["ref"], device=device)
        compute_reference(lm, tok, data_view, config, knowledge=knowledge).save(folder / REFERENCE_FILE)

    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            REFERENCE_STAGE, key, write, stage_version=REFERENCE_VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], config_digest=config.digest(),
                                  data_digest=data["info"]["data_digest"]))
    ref = load_reference(artifact.ref())
    return output(REFERENCE_STAGE, artifact.ref(), t.seconds,
                  {"n_benign": len(ref.continuations), "n_harmful_references": len(ref.harmful_references),
                   "knowledge_source": ref.meta.get("knowledge_source", "original")}, version=REFERENCE_VERSION, reused=reused)


def load_reference(ref: ArtifactRef | Mapping[str, Any]) -> ReferenceOutputs:
    return ReferenceOutputs.load(ArtifactStore().open_ref(ref).path / REFERENCE_FILE)


def _llm_judge(spec: str | None, config: EvalConfig, device: str) -> Any:
    if "llm" not in config.judges:
        return None
    from cku_core.device import resolve_device
    from cku_core.errors import ConfigError
    from cku_core.judges.llm import LLMJudge
    from cku_core.models import load_model_and_tokenizer

    if not spec:
        raise ConfigError("the evaluation's judges include 'llm' but no judge model is set; set options.judge_model")
    judge_model, judge_tok = load_model_and_tokenizer(spec, device=resolve_device(device))
    return LLMJudge(judge_model, judge_tok)


@task(name="evaluate", tags=[GPU_TAG], cache_key_fn=cache_key_fn(EVAL_STAGE, EVAL_VERSION), **CACHED_TASK_OPTIONS)
def evaluate_stage(model: dict[str, Any], data: dict[str, Any], reference: dict[str, Any] | None,
                   config: EvalConfig, judge_model: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Attack `model` on held-out harmful prompts, judge every response, and measure utility."""
    config = EvalConfig.model_validate(config)
    key = stage_key(EVAL_STAGE, EVAL_VERSION, {"model": model, "data": data, "reference": reference,
                                               "config": config, "judge_model": judge_model})
    log = get_run_logger()

    def write(folder: Path) -> None:
        lm, tok, _info = load_model_artifact(model["ref"], device=device)
        with StageProgress("evaluate", 0, unit="gen") as bar:
            def progress(done: int, total: int) -> None:
                bar(done, total)
                if done == total or done % 50 == 0:
                    log.info("evaluation progress %d/%d", done, total)

            result = evaluate_model(lm, tok, eval_data(data, config), config,
                                    reference=load_reference(reference["ref"]) if reference else None,
                                    judge=_llm_judge(judge_model, config, device), on_progress=progress)
        with open(folder / ROWS_FILE, "w", encoding="utf-8") as f:
            for row in result.row_dicts():
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        (folder / METRICS_FILE).write_text(json.dumps({
            "metrics": result.metric_dicts(), "config_digest": result.config_digest,
            "data_digest": result.data_digest, "reference_digest": result.reference_digest,
            "seconds": result.seconds}, indent=1), encoding="utf-8")

    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            EVAL_STAGE, key, write, stage_version=EVAL_VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], config_digest=config.digest(),
                                  data_digest=data["info"]["data_digest"]))
    metrics = load_metrics(artifact.ref())
    headline = {f"{m['metric']}|{m.get('judge')}|{m['attack']}": m["value"] for m in metrics
                if m["attack"] in ("all", "none") and m["family"] in ("all", "none")}
    return output(EVAL_STAGE, artifact.ref(), t.seconds, {"headline": headline, "n_metrics": len(metrics)}, version=EVAL_VERSION, reused=reused)


def load_metrics(ref: ArtifactRef | Mapping[str, Any]) -> list[dict[str, Any]]:
    return json.loads((ArtifactStore().open_ref(ref).path / METRICS_FILE).read_text(encoding="utf-8"))["metrics"]


def load_rows(ref: ArtifactRef | Mapping[str, Any]) -> list[dict[str, Any]]:
    path = ArtifactStore().open_ref(ref).path / ROWS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
