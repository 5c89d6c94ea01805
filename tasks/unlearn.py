"""Stage `checkpoint`: masked unlearning of the original model, saved as a model artifact.

The core loop (cku_core.unlearn) prunes the gradients of the retained set U and verifies, bit for
bit, that locked and frozen weights did not move; this task only feeds it and saves the result:
a delta (the trainable tensors only, safetensors) on top of the model artifact it started from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from cku_core.config import UnlearnConfig
from cku_core.delta import save_delta
from cku_core.store import ArtifactStore, Provenance
from cku_core.unlearn import StepStats, unlearn
from tasks._progress import StageProgress
from tasks._stage import CACHED_TASK_OPTIONS, GPU_TAG, Timer, cache_key_fn, output, stage_key
from tasks.data import load_examples
from tasks.mask import load_mask
from tasks.model import DELTA_FILE, load_model_artifact, write_delta_info

STAGE, VERSION = "checkpoint", "2"
REPORT_FILE = "unlearn_report.json"


@task(name="unlearn", tags=[GPU_TAG], cache_key_fn=cache_key_fn(STAGE, VERSION), **CACHED_TASK_OPTIONS)
def unlearn_stage(model: dict[str, Any], examples: dict[str, Any], config: UnlearnConfig,
                  mask: dict[str, Any] | None = None, band: list[int] | None = None,
                  max_seconds: float | None = None) -> dict[str, Any]:
    """Unlearn the `forget` split, regularized on the `scoring` (useful) split, with U's gradients pruned."""
    config = UnlearnConfig.model_validate(config)
    key = stage_key(STAGE, VERSION, {"model": model, "examples": examples, "config": config, "mask": mask,
                                     "band": band, "max_seconds": max_seconds})
    log = get_run_logger()
    progress: StageProgress | None = None

    def on_step(s: StepStats) -> None:
        nonlocal progress
        if progress is None:
            progress = StageProgress("unlearn", s.total_steps, unit="step")
        progress(s.step, s.total_steps, {"loss": f"{s.loss:.3f}", "forget_nll": f"{s.forget_nll:.3f}"})
        if s.step == 1 or s.step == s.total_steps or s.step % 10 == 0:
            log.info("step %d/%d loss %.4f harm %.4f reg %.4f forget NLL %.3f (%.1f s)",
                     s.step, s.total_steps, s.loss, s.harm, s.reg, s.forget_nll, s.seconds)

    def write(folder: Path) -> None:
        lm, tok, info = load_model_artifact(model["ref"], device=config.device)
        splits = load_examples(examples["ref"])
        retained = load_mask(mask["ref"]) if mask else None
        if retained is not None:
            retained.check_compatible(lm, info["fingerprint"])
        try:
            report = unlearn(lm, tok, splits["forget"], splits["scoring"], config, mask=retained, layers=band,
                             on_step=on_step, max_seconds=max_seconds)
        finally:
            if progress is not None:
                progress.close()
        save_delta(lm, report.trainable_names, folder / DELTA_FILE,
                   metadata={"base_fingerprint": info["fingerprint"], "config": config.canonical_json()})
        (folder / REPORT_FILE).write_text(json.dumps(report.as_dict(), indent=1), encoding="utf-8")
        write_delta_info(folder, lm, model["ref"], info)

    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            STAGE, key, write, stage_version=VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], config_digest=config.digest(),
                                  data_digest=examples["info"]["digests"]["forget"]))
    info = json.loads((artifact.path / "info.json").read_text())
    report = json.loads((artifact.path / REPORT_FILE).read_text())
    summary = {k: report[k] for k in ("steps", "seconds", "stopped_early", "n_trainable", "n_locked", "n_changed")}
    last = report["history"][-1] if report["history"] else {}
    return output(STAGE, artifact.ref(), t.seconds, {**info, "report": summary,
                                                     "final_forget_nll": last.get("forget_nll")}, version=VERSION, reused=reused)
