"""Stage `relearn`: the relearning attack on one model (checkpoint or original), one curve per data kind.

Wraps cku_core.relearn: fine-tune the model for k = config.steps (one cumulative run) on a few forget
or benign examples and measure, at k = 0 and after each k, the held-out harmful NLL and a small
attack subset's ASR. The artifact `curve.json` holds every point's metric rows, so the results
store can be rebuilt from artifacts alone. Keyed by the model's content (the checkpoint's digest),
the examples, the splits, the reference and both configs; the device is not part of the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cku_core.data import examples_digest
from cku_core.eval.config import EvalConfig
from cku_core.relearn import (
    CurvePoint,
    RelearnConfig,
    choose_examples,
    evaluation_measure,
    relearn_curve,
    relearn_eval_config,
)
from cku_core.results import ResultsStore
from cku_core.store import ArtifactRef, ArtifactStore, Provenance
from tasks._stage import (
    CACHED_TASK_OPTIONS,
    GPU_TAG,
    Timer,
    cache_key_fn,
    output,
    stage_key,
)
from tasks.data import load_examples
from tasks.evaluate import eval_data, load_reference
from tasks.model import load_model_artifact

STAGE, VERSION = "relearn", "1"
CURVE_FILE = "curve.json"
# Which split each data kind fine-tunes on: forget = harmful pairs (never the held-out prompts),
# benign = the useful pairs that scoring and the regularizer use.
SPLIT_OF = {"forget": "forget", "benign": "scoring"}
METRIC_KEYS = ("metric", "value", "judge", "attack", "family", "subset", "n")


@task(name="relearn", tags=[GPU_TAG], cache_key_fn=cache_key_fn(STAGE, VERSION), **CACHED_TASK_OPTIONS)
def relearn_stage(model: dict[str, Any], examples: dict[str, Any], data: dict[str, Any], reference: dict[str, Any],
                  config: RelearnConfig, evaluation: EvalConfig, device: str = "auto") -> dict[str, Any]:
    """Fine-tune `model` on `config.n_examples` examples of `config.data` and measure it after each k."""
    config, evaluation = RelearnConfig.model_validate(config), EvalConfig.model_validate(evaluation)
    key = stage_key(STAGE, VERSION, {"model": model, "examples": examples, "data": data, "reference": reference,
                                     "config": config, "evaluation": evaluation})
    log = get_run_logger()
    pool = load_examples(examples["ref"])[SPLIT_OF[config.data]]
    chosen = choose_examples(pool, config)

    def on_point(p: CurvePoint) -> None:
        log.info("relearn (%s) k=%d: held-out harmful NLL %s, ASR %s", config.data, p.step,
                 _fmt(p.value("knowledge_nll")), _fmt(p.value("asr", "refusal_keyword", "all", "all")))

    def write(folder: Path) -> None:
        lm, tok, info = load_model_artifact(model["ref"], device=device)
        eval_config = relearn_eval_config(evaluation, config)
        measure = evaluation_measure(tok, eval_data(data, eval_config), load_reference(reference["ref"]), eval_config)
        curve = relearn_curve(lm, tok, chosen, config, measure, device=device, on_point=on_point)
        (folder / CURVE_FILE).write_text(json.dumps({
            **curve.as_dict(), "data": config.data, "examples_digest": examples_digest(chosen),
            "model_fingerprint": info["fingerprint"], "config": config.model_dump(mode="json"),
            "eval_config_digest": eval_config.digest()}, indent=1), encoding="utf-8")

    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            STAGE, key, write, stage_version=VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], config_digest=config.digest(),
                                  data_digest=examples_digest(chosen)))
    curve = load_curve(artifact.ref())
    summary = [{"k": p["step"], "knowledge_nll": CurvePoint(**p).value("knowledge_nll"),
                "asr": CurvePoint(**p).value("asr", "refusal_keyword", "all", "all")} for p in curve["points"]]
    return output(STAGE, artifact.ref(), t.seconds, {"data": config.data, "curve": summary,
                                                     "data_digest": examples_digest(chosen)},
                  version=VERSION, reused=reused)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def load_curve(ref: ArtifactRef | Mapping[str, Any]) -> dict[str, Any]:
    return json.loads((ArtifactStore().open_ref(ref).path / CURVE_FILE).read_text(encoding="utf-8"))


def curve_rows(curve: Mapping[str, Any], method: str, provenance: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`metrics` rows of a curve: every measured metric per k, plus the attacker's training loss."""
    rows = []
    for p in curve["points"]:
        tag = {"method": method, "relearn_step": p["step"], "relearn_data": curve["data"], **provenance}
        rows += [{**{k: m.get(k) for k in METRIC_KEYS}, **tag} for m in p["metrics"]]
        if p["train_loss"] is not None:
            rows.append({"metric": "relearn_train_loss", "value": p["train_loss"], "judge": None, "attack": "none",
                         "family": "none", "subset": curve["data"], "n": curve["n_examples"], **tag})
    return rows


@task(name="record-relearn", cache_policy=NO_CACHE)
def record_relearn(run_id: str, method: str, relearned: dict[str, Any], provenance: dict[str, Any]) -> int:
    """Write one curve's rows to the `metrics` table (one part per method and data kind); returns the count."""
    curve = load_curve(relearned["ref"])
    # The data digest of these rows is the examples the attacker fine-tuned on.
    rows = curve_rows(curve, method, {**provenance, "data_digest": relearned["info"]["data_digest"]})
    ResultsStore().write_rows("metrics", run_id, f"relearn-{method}-{curve['data']}", rows)
    return len(rows)
