"""Stage `align`: the safety fine-tune (cku_core.align), saved as a full model artifact.

The artifact has the layout of the `model` stage's (`info.json` + a safetensors folder under `hf/`),
so every later stage loads it as "the model"; `info.json` also names the raw model it came from
(`base`, `base_fingerprint`) and summarises the training. It is cached by the raw model's
fingerprint, the digest of the align splits only (a change of the forget or evaluation splits does
not retrain), the AlignConfig's canonical JSON and the stage version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from cku_core.align import AlignConfig, AlignStep, align_model, build_examples
from cku_core.errors import ConfigError
from cku_core.store import ArtifactStore, Provenance
from tasks._progress import StageProgress
from tasks._stage import CACHED_TASK_OPTIONS, GPU_TAG, Timer, checked_prefect_key, output, stage_key
from tasks.data import load_splits
from tasks.model import HF_DIR, load_model_artifact, read_info, write_model_info

STAGE, VERSION = "align", "1"
REPORT_FILE = "align_report.json"
EXAMPLES_FILE = "align_examples.json"


def align_key(parameters: Mapping[str, Any]) -> str:
    """The stage key: raw model fingerprint, align split digest, config (the device is left out)."""
    config = AlignConfig.model_validate(parameters["config"])
    return stage_key(STAGE, VERSION, {"model_fingerprint": parameters["model"]["info"]["fingerprint"],
                                      "align_digest": parameters["data"]["info"]["align_digest"],
                                      "config": config})


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return checked_prefect_key(context, STAGE, VERSION, align_key(parameters))


def _align_prompts(data: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    split = load_splits(data["ref"]).get("align", {})
    harmful = [r["prompt"] for r in split.get("align_harmful", [])]
    benign = [r["prompt"] for r in split.get("align_benign", [])]
    if not harmful:
        raise ConfigError("align.enabled needs harmful prompts to refuse: set data.n_align_harmful > 0 "
                          "(and data.n_align_benign for the benign half)")
    return harmful, benign


def _write(folder: Path, model: Mapping[str, Any], data: Mapping[str, Any], config: AlignConfig, device: str) -> None:
    log = get_run_logger()
    harmful, benign = _align_prompts(data)
    lm, tok, info = load_model_artifact(model["ref"], device=device)
    with StageProgress("align: own benign answers", len(benign), unit="prompt") as bar:
        examples = build_examples(lm, tok, harmful, benign, config, on_progress=bar)
    with StageProgress("align", config.steps, unit="step") as bar:
        def on_step(s: AlignStep) -> None:
            bar(s.step, s.total_steps, {"loss": f"{s.loss:.3f}", "refusal_nll": f"{s.refusal_nll:.3f}"})
            if s.step == 1 or s.step == s.total_steps or s.step % 10 == 0:
                log.info("align step %d/%d loss %.4f refusal NLL %.3f benign NLL %.3f (%.1f s)",
                         s.step, s.total_steps, s.loss, s.refusal_nll, s.benign_nll, s.seconds)

        report = align_model(lm, tok, examples, config, on_step=on_step)
    lm.to("cpu").save_pretrained(folder / HF_DIR)
    tok.save_pretrained(folder / HF_DIR)
    (folder / EXAMPLES_FILE).write_text(json.dumps(
        [{"kind": e.kind, "source": e.source, "complete": e.complete, "prompt": e.example.prompt,
          "response": e.example.response} for e in examples], indent=1, ensure_ascii=False), encoding="utf-8")
    (folder / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
    summary = {k: v for k, v in report.as_dict().items() if k not in ("history", "refusal_ids")}
    write_model_info(folder, lm, info["spec"], HF_DIR, base=dict(model["ref"]), base_fingerprint=info["fingerprint"],
                     align={**summary, "config_digest": config.digest(),
                            "final_refusal_nll": report.history[-1].refusal_nll,
                            "final_benign_nll": report.history[-1].benign_nll})


@task(name="align-model", tags=[GPU_TAG], cache_key_fn=_cache_key, **CACHED_TASK_OPTIONS)
def align_stage(model: dict[str, Any], data: dict[str, Any], config: AlignConfig, device: str = "auto") -> dict[str, Any]:
    """Safety fine-tune of the raw model on the align splits; returns a model artifact like the model stage's."""
    config = AlignConfig.model_validate(config)
    key = align_key({"model": model, "data": data, "config": config})
    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            STAGE, key, lambda folder: _write(folder, model, data, config, device), stage_version=VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], data_digest=data["info"]["align_digest"],
                                  config_digest=config.digest()))
    return output(STAGE, artifact.ref(), t.seconds, read_info(artifact.path), version=VERSION, reused=reused)
