"""Stage `checkpoint`: masked unlearning of the original model, saved as a model artifact.

The core loop (cku_core.unlearn) prunes the gradients of the retained set U and verifies, bit for
bit, that locked and frozen weights did not move; this task only feeds it and saves the result:
a delta (the trainable tensors only, safetensors) on top of the model artifact it started from.

Every `checkpoint_every` steps the training state (trainable tensors + optimizer state, safetensors
and JSON, never pickle) is saved as an `unlearn-state` artifact named after the stage key and step.
A rerun of the same stage after a crash or SIGKILL resumes from the newest intact one and ends with
the same weights, bit for bit on CPU, as an uninterrupted run; the states are deleted once the
checkpoint artifact is published.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from cku_core.config import UnlearnConfig
from cku_core.delta import save_delta
from cku_core.resume import ResumeStateError, load_training_state, save_training_state
from cku_core.store import Artifact, ArtifactStore, Provenance, StoreError
from cku_core.unlearn import StepStats, unlearn
from tasks._progress import StageProgress
from tasks._stage import CACHED_TASK_OPTIONS, GPU_TAG, Timer, cache_key_fn, output, stage_key
from tasks.data import load_examples
from tasks.mask import load_mask
from tasks.model import DELTA_FILE, load_model_artifact, write_delta_info

STAGE, VERSION = "checkpoint", "2"
REPORT_FILE = "unlearn_report.json"
STATE_STAGE = "unlearn-state"  # training states of unfinished runs, `<checkpoint key>-step<N>`


def state_keys(store: ArtifactStore, key: str) -> list[str]:
    """Saved training states of one checkpoint key, newest first."""
    return sorted((k for k in store.keys(STATE_STAGE) if k.startswith(f"{key}-step")), reverse=True)


def latest_state(store: ArtifactStore, key: str, log: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(state, extra) of the newest saved state that verifies against its manifest and loads, else None."""
    for name in state_keys(store, key):
        artifact = store.get(STATE_STAGE, name)  # a corrupt one is quarantined with a warning
        if artifact is None:
            continue
        try:
            return load_training_state(artifact.path)
        except ResumeStateError as exc:
            log.warning("%s", exc)
            store.discard(STATE_STAGE, name)
    return None


def discard_states(store: ArtifactStore, key: str) -> None:
    for name in state_keys(store, key):
        store.discard(STATE_STAGE, name)


@task(name="unlearn", tags=[GPU_TAG], cache_key_fn=cache_key_fn(STAGE, VERSION), **CACHED_TASK_OPTIONS)
def unlearn_stage(model: dict[str, Any], examples: dict[str, Any], config: UnlearnConfig,
                  mask: dict[str, Any] | None = None, band: list[int] | None = None,
                  max_seconds: float | None = None, checkpoint_every: int | None = None) -> dict[str, Any]:
    """Unlearn the `forget` split, regularized on the `scoring` (useful) split, with U's gradients pruned.

    `checkpoint_every`: save the training state every N steps (resumed by a rerun); not in the cache key.
    """
    config = UnlearnConfig.model_validate(config)
    key = checkpoint_key(model, examples, config, mask, band, max_seconds)
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

    store = ArtifactStore()
    earlier: list[dict[str, Any]] = []  # step history of the interrupted run(s) this one resumes

    def on_checkpoint(state: dict[str, Any]) -> None:
        extra = {"key": key, "history": earlier + [asdict(h) for h in history]}
        try:
            store.put(STATE_STAGE, f"{key}-step{state['step']:08d}",
                      lambda folder: save_training_state(state, folder, extra), stage_version=VERSION,
                      provenance=Provenance(config_digest=config.digest()))
        except StoreError as exc:  # a lost checkpoint costs only recomputation after a crash
            log.warning("could not save the unlearning state at step %d: %s", state["step"], exc)
            return
        for name in state_keys(store, key)[1:]:
            store.discard(STATE_STAGE, name)

    history: list[StepStats] = []

    def write(folder: Path) -> None:
        lm, tok, info = load_model_artifact(model["ref"], device=config.device)
        splits = load_examples(examples["ref"])
        retained = load_mask(mask["ref"]) if mask else None
        if retained is not None:
            retained.check_compatible(lm, info["fingerprint"])
        resumed = latest_state(store, key, log) if checkpoint_every else None
        if resumed is not None:
            log.info("resuming unlearning at step %d from a saved state", resumed[0]["step"])
            earlier.extend(resumed[1].get("history", []))

        def run(resume_state: dict[str, Any] | None):
            return unlearn(lm, tok, splits["forget"], splits["scoring"], config, mask=retained, layers=band,
                           on_step=lambda s: (history.append(s), on_step(s)), max_seconds=max_seconds,
                           checkpoint_every=checkpoint_every, on_checkpoint=on_checkpoint if checkpoint_every else None,
                           resume_state=resume_state)
        try:
            try:
                report = run(resumed[0] if resumed else None)
            except ResumeStateError as exc:  # refused before any weight was touched
                log.warning("%s; starting from step 0", exc)
                discard_states(store, key)
                earlier.clear()
                history.clear()
                resumed = None
                report = run(None)
        finally:
            if progress is not None:
                progress.close()
        save_delta(lm, report.trainable_names, folder / DELTA_FILE,
                   metadata={"base_fingerprint": info["fingerprint"], "config": config.canonical_json()})
        summary = report.as_dict()
        summary["history"] = earlier + summary["history"]
        summary["resumed_from_step"] = resumed[0]["step"] if resumed else 0
        (folder / REPORT_FILE).write_text(json.dumps(summary, indent=1), encoding="utf-8")
        write_delta_info(folder, lm, model["ref"], info)

    with Timer() as t:
        artifact, reused = store.get_or_put(
            STAGE, key, write, stage_version=VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], config_digest=config.digest(),
                                  data_digest=examples["info"]["digests"]["forget"]))
    discard_states(store, key)
    return checkpoint_output(artifact, t.seconds, reused)


def checkpoint_key(model: dict[str, Any], examples: dict[str, Any], config: UnlearnConfig,
                   mask: dict[str, Any] | None, band: list[int] | None, max_seconds: float | None) -> str:
    """The checkpoint's store key: the stage and a hand-off to another worker (tasks/handoff.py) agree on it."""
    return stage_key(STAGE, VERSION, {"model": model, "examples": examples, "config": config, "mask": mask,
                                      "band": band, "max_seconds": max_seconds})


def checkpoint_output(artifact: Artifact, seconds: float, reused: bool) -> dict[str, Any]:
    """The stage's return value, read from a published checkpoint artifact."""
    info = json.loads((artifact.path / "info.json").read_text())
    report = json.loads((artifact.path / REPORT_FILE).read_text())
    summary = {k: report[k] for k in ("steps", "seconds", "stopped_early", "n_trainable", "n_locked", "n_changed")}
    last = report["history"][-1] if report["history"] else {}
    return output(STAGE, artifact.ref(), seconds, {**info, "report": summary,
                                                   "final_forget_nll": last.get("forget_nll")}, version=VERSION, reused=reused)
