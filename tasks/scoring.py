"""Stage `scores`: neuron importance on useful data, computed once per model/data/scoring config.

A sweep over NLR and layer bands reuses one scores artifact: the mask stage only selects from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from prefect import task
from safetensors.torch import load_file, save_file

from cku_core.config import ScoringConfig
from cku_core.scoring import score_neurons
from cku_core.store import ArtifactRef, ArtifactStore, Provenance
from tasks._stage import CACHED_TASK_OPTIONS, GPU_TAG, Timer, cache_key_fn, output, stage_key
from tasks.data import load_examples
from tasks.model import load_model_artifact

STAGE, VERSION = "scores", "1"
SCORES_FILE = "scores.safetensors"


@task(name="score-neurons", tags=[GPU_TAG], cache_key_fn=cache_key_fn(STAGE, VERSION), **CACHED_TASK_OPTIONS)
def score_stage(model: dict[str, Any], examples: dict[str, Any], config: ScoringConfig,
                device: str = "auto") -> dict[str, Any]:
    """Score the MLP units of the selected layers on the `scoring` split (useful knowledge)."""
    config = ScoringConfig.model_validate(config)
    key = stage_key(STAGE, VERSION, {"model": model, "examples": examples, "config": config})

    def write(folder: Path) -> None:
        lm, tok, _info = load_model_artifact(model["ref"], device=device)
        useful = load_examples(examples["ref"])["scoring"]
        scores = score_neurons(lm, tok, useful, config)
        save_file({f"scores.{layer}": s.float().contiguous().cpu() for layer, s in scores.items()},
                  str(folder / SCORES_FILE), metadata={"scorer": config.scorer})

    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            STAGE, key, write, stage_version=VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], config_digest=config.digest(),
                                  data_digest=examples["info"]["digests"]["scoring"]))
    layers = sorted(load_scores(artifact.ref()))
    return output(STAGE, artifact.ref(), t.seconds, {"layers": layers, "scorer": config.scorer}, version=VERSION, reused=reused)


def load_scores(ref: ArtifactRef | Mapping[str, Any]) -> dict[int, torch.Tensor]:
    tensors = load_file(str(ArtifactStore().open_ref(ref).path / SCORES_FILE))
    return {int(name.split(".", 1)[1]): t for name, t in tensors.items()}
