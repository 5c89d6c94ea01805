"""`cku-sweep`: CKU over an NLR x layer band x objective grid, sharing every cached stage.

Neurons are scored once, on the union of all bands; each grid point is a `cku-pipeline` subflow
(its own run in the UI and the results store, with `parent_run_id` = the sweep), whose model, data,
reference and score stages are cache hits. Compare the points with, e.g.:

    cku query "SELECT r.config->>'$.mask.nlr' AS nlr, r.config->>'$.band' AS band,
               r.config->>'$.unlearn.objective' AS objective, m.value AS asr
               FROM runs r JOIN metrics m USING (run_id)
               WHERE r.parent_run_id = '<sweep run id>' AND m.metric = 'asr' AND m.attack = 'all'"
"""

from __future__ import annotations

from itertools import product
from typing import Any

from prefect import flow

from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.preflight import preflight_run
from flows._runs import close_run, open_run, record_failure
from flows.pipeline import cku_pipeline, run_config
from tasks.params import ModelConfig, RunOptions


def grid(nlrs: list[float], bands: list[list[int] | None], objectives: list[str]
         ) -> list[tuple[float, list[int] | None, str]]:
    return list(product(nlrs, bands, objectives))


def scored_layers(bands: list[list[int] | None], scoring: ScoringConfig) -> list[int] | None:
    """Every layer any band needs (None when every band is the default band)."""
    explicit = [b for b in bands if b is not None]
    if not explicit:
        return scoring.layers
    return sorted({layer for b in explicit for layer in b} | set(scoring.layers or []))


@flow(name="cku-sweep", on_failure=[record_failure], on_crashed=[record_failure])
def cku_sweep(
    model: ModelConfig = ModelConfig(),
    data: SplitConfig = SplitConfig(),
    scoring: ScoringConfig = ScoringConfig(),
    unlearn: UnlearnConfig = UnlearnConfig(),
    evaluation: EvalConfig = EvalConfig(),
    nlrs: list[float] = [0.5, 0.8, 0.9],  # noqa: B006 - Prefect parameters are copied, never mutated
    bands: list[list[int] | None] = [None],  # noqa: B006
    objectives: list[str] = ["hinge_ga", "ga"],  # noqa: B006
    options: RunOptions = RunOptions(),
) -> dict[str, Any]:
    """Run CKU for every (NLR, band, objective); `bands` entries of null mean the default band."""
    preflight_run(model=model, data=data, scoring=scoring, bands=bands)
    log = open_run("cku", run_config(model=model, data=data, scoring=scoring, unlearn=unlearn, evaluation=evaluation,
                                     nlrs=nlrs, bands=bands, objectives=objectives, options=options))
    shared_scoring = scoring.model_copy(update={"layers": scored_layers(bands, scoring)})
    points = []
    for nlr, band, objective in grid(nlrs, bands, objectives):
        out = cku_pipeline(model=model, data=data, scoring=shared_scoring, mask=MaskConfig(nlr=nlr),
                           unlearn=unlearn.model_copy(update={"objective": objective}), evaluation=evaluation,
                           method="cku", band=band, options=options)
        points.append({"nlr": nlr, "band": band, "objective": objective, "run_id": out["run_id"],
                       "headline": out["headline"], "cached": out["cached"]})
    close_run(log)
    return {"run_id": log.run_id, "points": points}
