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
from typing import Any, Literal

from prefect import flow

from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.preflight import preflight_run
from flows._runs import close_run, open_run, publish_comparison, record_failure
from flows.pipeline import cku_pipeline, run_config
from tasks.params import ModelConfig, RunOptions


def grid(nlrs: list[float], bands: list[list[int] | None], objectives: list[str], design: str = "grid"
         ) -> list[tuple[float, list[int] | None, str]]:
    """The sweep's points. `grid`: every combination. `paper`: the paper's two analyses, an NLR
    sweep in the first band and a layer-band sweep at NLR 0.8, with the first objective."""
    if design == "grid":
        return list(product(nlrs, bands, objectives))
    nlr_sweep = [(nlr, bands[0], objectives[0]) for nlr in nlrs]
    band_sweep = [(0.8, band, objectives[0]) for band in bands[1:]]
    return nlr_sweep + [p for p in band_sweep if p not in nlr_sweep]


def point_label(nlr: float, band: list[int] | None, objective: str) -> str:
    layers = "default" if band is None else (f"{band[0]}-{band[-1]}" if band == list(range(band[0], band[-1] + 1)) else ",".join(map(str, band)))
    return f"nlr={nlr:g} layers={layers} {objective}"


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
    design: Literal["grid", "paper"] = "grid",
) -> dict[str, Any]:
    """Run CKU for every (NLR, band, objective); `bands` entries of null mean the default band.

    design `paper`: NLR sweep in bands[0] plus band sweep at NLR 0.8 (the paper's two analyses).
    The points are published side by side (table + ASR-vs-utility plot) in the Prefect UI.
    """
    preflight_run(model=model, data=data, scoring=scoring, bands=bands)
    log = open_run("cku", run_config(model=model, data=data, scoring=scoring, unlearn=unlearn, evaluation=evaluation,
                                     nlrs=nlrs, bands=bands, objectives=objectives, options=options, design=design))
    shared_scoring = scoring.model_copy(update={"layers": scored_layers(bands, scoring)})
    points = []
    for nlr, band, objective in grid(nlrs, bands, objectives, design):
        out = cku_pipeline(model=model, data=data, scoring=shared_scoring, mask=MaskConfig(nlr=nlr),
                           unlearn=unlearn.model_copy(update={"objective": objective}), evaluation=evaluation,
                           method="cku", band=band, options=options)
        points.append({"nlr": nlr, "band": band, "objective": objective, "run_id": out["run_id"],
                       "headline": out["headline"], "cached": out["cached"]})
    table = publish_comparison(log.run_id, [p["run_id"] for p in points],
                               labels={p["run_id"]: point_label(p["nlr"], p["band"], p["objective"]) for p in points})
    close_run(log)
    return {"run_id": log.run_id, "name": log.name, "points": points, "table": table}
