"""`cku-sweep`: CKU over an NLR x layer band x objective grid, sharing every cached stage.

Neurons are scored once, on the union of all bands; each grid point is a `cku-pipeline` subflow
(its own run in the UI and the results store, with `parent_run_id` = the sweep), whose model, data,
reference and score stages are cache hits. `scale_out` runs the points one after another (default) or
in parallel on a Dask or Ray cluster: then the shared stages run here first, once, and each point is a
`sweep-point` task on the cluster that runs the same subflow (flows/_fanout.py, docs/cluster.md).
Compare the points with, e.g.:

    cku query "SELECT r.config->>'$.mask.nlr' AS nlr, r.config->>'$.band' AS band,
               r.config->>'$.unlearn.objective' AS objective, m.value AS asr
               FROM runs r JOIN metrics m USING (run_id)
               WHERE r.parent_run_id = '<sweep run id>' AND m.metric = 'asr' AND m.attack = 'all'"
"""

from __future__ import annotations

from itertools import product
from typing import Any, Literal

from prefect import flow

from cku_core.align import AlignConfig, check_align
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.methods import method_configs
from cku_core.preflight import preflight_run
from flows._fanout import check_scale_out, run_points, worker_name
from flows._runs import RunLog, close_run, open_run, publish_comparison, record_failure
from flows.pipeline import cku_pipeline, prepare_inputs, run_config, training_examples
from tasks.params import ModelConfig, RunOptions, ScaleOutConfig
from tasks.scoring import score_stage


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


def shared_stages(log: RunLog, model: ModelConfig, data: SplitConfig, scoring: ScoringConfig, unlearn: UnlearnConfig,
                  evaluation: EvalConfig, options: RunOptions, align: AlignConfig | None = None) -> None:
    """Model, data, reference, examples and scores, computed here once: a parallel point then only hits the cache.

    The score stage gets the scoring config a `cku` pipeline derives (method_configs), so its key is the points'.
    """
    m, d, _ref = prepare_inputs(log, model, data, evaluation, options, align)
    examples = training_examples(log, m, d, evaluation, options)
    _u, s_cfg, _m = method_configs("cku", unlearn, scoring, MaskConfig())
    log.stage(score_stage, m, examples, s_cfg, device=options.device)


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
    scale_out: ScaleOutConfig = ScaleOutConfig(),
    align: AlignConfig = AlignConfig(),
) -> dict[str, Any]:
    """Run CKU for every (NLR, band, objective); `bands` entries of null mean the default band.

    design `paper`: NLR sweep in bands[0] plus band sweep at NLR 0.8 (the paper's two analyses).
    `scale_out`: sequential (default), or the points in parallel on a Dask / Ray cluster (docs/cluster.md).
    `align`: every point starts from the safety fine-tuned model (computed once, cached).
    The points are published side by side (table + ASR-vs-utility plot) in the Prefect UI.
    """
    preflight_run(model=model, data=data, scoring=scoring, bands=bands)
    check_scale_out(scale_out)
    check_align(align, data.n_align_harmful)
    log = open_run("cku", run_config(model=model, data=data, scoring=scoring, unlearn=unlearn, evaluation=evaluation,
                                     nlrs=nlrs, bands=bands, objectives=objectives, options=options, design=design,
                                     scale_out=scale_out, align=align))
    shared_scoring = scoring.model_copy(update={"layers": scored_layers(bands, scoring)})
    coords = grid(nlrs, bands, objectives, design)
    params = [dict(model=model, data=data, scoring=shared_scoring, mask=MaskConfig(nlr=nlr),
                   unlearn=unlearn.model_copy(update={"objective": objective}), evaluation=evaluation,
                   method="cku", band=band, options=options, align=align) for nlr, band, objective in coords]
    if scale_out.task_runner == "sequential":
        outs = [{**cku_pipeline(**p), "worker": worker_name()} for p in params]
    else:
        shared_stages(log, model, data, shared_scoring, unlearn, evaluation, options, align)
        outs = run_points(params, scale_out)
    points = [{"nlr": nlr, "band": band, "objective": objective, "run_id": out["run_id"],
               "headline": out["headline"], "cached": out["cached"], "worker": out["worker"]}
              for (nlr, band, objective), out in zip(coords, outs)]
    table = publish_comparison(log.run_id, [p["run_id"] for p in points],
                               labels={p["run_id"]: point_label(p["nlr"], p["band"], p["objective"]) for p in points})
    close_run(log, children=[p["run_id"] for p in points])
    return {"run_id": log.run_id, "name": log.name, "points": points, "table": table}
