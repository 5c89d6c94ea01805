"""Stage `mask`: the retained set U (top ceil(NLR * d_ff) units per layer) as a safetensors artifact."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task

from cku_core.config import MaskConfig
from cku_core.errors import ConfigError
from cku_core.masks import RetainedSet, select_retained
from cku_core.store import ArtifactRef, ArtifactStore, Provenance
from tasks._stage import CACHED_TASK_OPTIONS, Timer, cache_key_fn, output, stage_key
from tasks.scoring import load_scores

STAGE, VERSION = "mask", "1"
MASK_FILE = "mask.safetensors"


@task(name="select-retained-set", cache_key_fn=cache_key_fn(STAGE, VERSION), **CACHED_TASK_OPTIONS)
def mask_stage(model: dict[str, Any], scores: dict[str, Any], config: MaskConfig,
               band: list[int] | None = None) -> dict[str, Any]:
    """Lock the top NLR fraction of units in each layer of `band` (None = every scored layer)."""
    config = MaskConfig.model_validate(config)
    key = stage_key(STAGE, VERSION, {"model": model, "scores": scores, "config": config, "band": band})

    def write(folder: Path) -> None:
        all_scores = load_scores(scores["ref"])
        layers = sorted(all_scores) if band is None else sorted(set(band))
        missing = [layer for layer in layers if layer not in all_scores]
        if missing:
            raise ConfigError(f"layers {missing} of the band were not scored (scored: {sorted(all_scores)}); "
                              "score every layer of every band (ScoringConfig.layers)")
        meta = {"model_fingerprint": model["info"]["fingerprint"], "model_type": model["info"]["model_type"],
                "d_ff": str(model["info"]["d_ff"]), "scorer": scores["info"]["scorer"],
                "scores_key": scores["key"]}
        select_retained({layer: all_scores[layer] for layer in layers}, config.nlr, metadata=meta).save(folder / MASK_FILE)

    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            STAGE, key, write, stage_version=VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], config_digest=config.digest()))
    retained = load_mask(artifact.ref())
    stats = [_stat_row(row, retained, config.nlr, scores["info"]["scorer"], artifact.key) for row in retained.stats()]
    return output(STAGE, artifact.ref(), t.seconds, {"layers": retained.layers, "nlr": config.nlr, "stats": stats}, version=VERSION, reused=reused)


def _stat_row(row: dict[str, Any], retained: RetainedSet, nlr: float, scorer: str, key: str) -> dict[str, Any]:
    """One `mask_stats` results row for a layer."""
    s = retained.scores.get(row["layer"])
    return {"layer": row["layer"], "d_ff": row["d_ff"], "n_locked": row["n_locked"], "nlr": nlr, "scorer": scorer,
            "score_min": float(s.min()) if s is not None else None,
            "score_max": float(s.max()) if s is not None else None,
            "score_mean": row.get("score_mean"),
            "score_std": float(s.std()) if s is not None and s.numel() > 1 else None,
            "threshold": row.get("score_min_locked"), "mask_key": key}


def load_mask(ref: ArtifactRef | Mapping[str, Any]) -> RetainedSet:
    return RetainedSet.load(ArtifactStore().open_ref(ref).path / MASK_FILE)
