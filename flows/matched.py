"""`cku-matched`: compare methods (or NLR points, or layer bands) at matched forgetting.

At one learning rate the methods forget different amounts, so their utility cannot be compared.
This flow runs every compared point over its own learning-rate grid and several seeds, each run a
`cku-pipeline` child sharing every cached stage (model, data, reference, examples and scores are
computed once), then compares utility at common levels of held-out harmful NLL:

    original model (the lr-0 end of every curve) ─┐
    for seed: for point: for lr: cku-pipeline ────┴─► read back from DuckDB ─► curves per seed
        ─► interpolate at matched forgetting ─► mean ± spread ─► verdicts ─► table + plot artifacts

The analysis is cku_core.analysis.matched (pure); `cku report --matched RUN` re-renders the same
report from the results store. Axes: `method` (cku, cku_random, ga, graddiff, npo), `nlr` (CKU at
each of `nlrs` in bands[0]) and `band` (CKU at mask.nlr in each of `bands`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger

from cku_core.align import AlignConfig, check_align
from cku_core.analysis.matched import MatchedAnalysis, plot_matched
from cku_core.analysis.matched_report import (
    load_matched,
    matched_markdown,
    png_data_uri,
    point_label,
)
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.errors import ConfigError
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.preflight import preflight_run
from flows._runs import close_run, open_run, publish_comparison, record_failure
from flows.pipeline import cku_pipeline, run_config
from flows.sweep import scored_layers
from tasks.params import ModelConfig, RunOptions

MATCHED_METHODS = ["cku", "cku_random", "ga", "graddiff", "npo"]
# Learning-rate grids per compared label ("default" for labels not listed), calibrated on
# SmolLM2-135M (16 steps): masked CKU needs ~10-30x the step of full-band GA to forget as much.
DEFAULT_LRS: dict[str, list[float]] = {
    "cku": [1e-4, 3e-4, 1e-3], "cku_random": [1e-4, 3e-4, 1e-3], "cku_nlr0": [3e-5, 1e-4, 3e-4],
    "ga": [1e-5, 3e-5, 6e-5], "graddiff": [1e-5, 3e-5, 1e-4], "npo": [1e-5, 3e-5, 1e-4],
    "default": [1e-4, 3e-4, 1e-3],
}


@dataclass(frozen=True)
class GridPoint:
    """One compared point: how its runs are configured and the learning rates it is run at."""

    label: str
    method: str
    mask: MaskConfig
    band: list[int] | None
    lrs: list[float]


def lr_grid(lrs: dict[str, list[float]], label: str) -> list[float]:
    grid = lrs.get(label, lrs.get("default"))
    if not grid:
        raise ConfigError(f"no learning-rate grid for {label!r}: set lrs.{label} (or lrs.default) to a list, "
                          f"e.g. --set 'lrs.{label}=[1e-4, 3e-4, 1e-3]'")
    return sorted(float(x) for x in grid)


def grid_points(axis: str, methods: list[str], nlrs: list[float], bands: list[list[int] | None],
                band: list[int] | None, mask: MaskConfig, lrs: dict[str, list[float]]) -> list[GridPoint]:
    """The compared points of `axis`; the original model is the shared anchor, never a point."""
    if axis == "method":
        specs = [(m, mask, band) for m in methods if m != "original"]
    elif axis == "nlr":
        specs = [("cku", MaskConfig(nlr=x), bands[0] if bands else band) for x in nlrs]
    elif axis == "band":
        specs = [("cku", mask, b) for b in bands]
    else:
        raise ConfigError(f"unknown axis {axis!r}; use method, nlr or band")
    points = [GridPoint(label, m, mk, b, lr_grid(lrs, label))
              for m, mk, b in specs for label in [point_label(axis, m, mk.nlr, b)]]
    if len(points) < 2:
        raise ConfigError(f"a matched comparison needs at least two points on the {axis} axis, got {len(points)}")
    return points


def shared_scoring(axis: str, points: list[GridPoint], scoring: ScoringConfig) -> ScoringConfig:
    """Neurons are scored once on every layer any point needs (the method axis keeps the config's layers,
    so it reuses the scores of `cku run`)."""
    if axis == "method":
        return scoring
    return scoring.model_copy(update={"layers": scored_layers([p.band for p in points], scoring)})


def run_point(point: GridPoint, lr: float, seed: int, seed_index: int, common: dict[str, Any],
              vary_localization: list[str]) -> dict[str, Any]:
    """One unlearning run as a `cku-pipeline` child; a failed run is reported, not fatal (a long grid
    must not be lost to one diverging learning rate)."""
    scoring: ScoringConfig = common["scoring"]
    if point.method in vary_localization:  # a different random U per seed (index 0 = the configured seed)
        scoring = scoring.model_copy(update={"seed": scoring.seed + seed_index})
    unlearn = common["unlearn"].model_copy(update={"lr": lr, "seed": seed})
    state = cku_pipeline(model=common["model"], data=common["data"], scoring=scoring, mask=point.mask,
                         unlearn=unlearn, evaluation=common["evaluation"], method=point.method, band=point.band,
                         options=common["options"], align=common["align"], return_state=True)
    row = {"label": point.label, "method": point.method, "lr": lr, "seed": seed}
    if not state.is_completed():
        get_run_logger().warning("run %s lr=%g seed=%d ended %s: %s", point.label, lr, seed, state.name, state.message)
        return {**row, "status": state.type.value.lower(), "run_id": None, "cached": {}}
    out = state.result()
    return {**row, "status": "completed", "run_id": out["run_id"], "cached": out["cached"],
            "headline": out["headline"]}


def publish_matched(run_id: str) -> tuple[MatchedAnalysis, str | None]:
    """Read the children back from DuckDB, analyse, and publish a table + markdown report with the
    plot (the PNG also goes to the artifact root's `reports/` folder)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from cku_core.store import ArtifactStore

    data = load_matched(run_id)
    analysis = data.analyse()
    png = plot_matched(analysis, ArtifactStore().root / "reports" / f"{run_id}-matched.png")
    rows = analysis.summary_rows()
    if rows:
        create_table_artifact(rows, key="cku-matched",
                              description=f"Utility at matched held-out harmful NLL (mean and seed {analysis.spread})")
    markdown = matched_markdown(data, analysis, png_data_uri(png) if png else None)
    if png:
        markdown += f"\nPlot file: `{png}`\n"
    create_markdown_artifact(markdown, key="cku-matched-report", description=f"Matched-forgetting report of run {run_id}")
    return analysis, str(png) if png else None


@flow(name="cku-matched", on_failure=[record_failure], on_crashed=[record_failure])
def cku_matched(
    model: ModelConfig = ModelConfig(),
    data: SplitConfig = SplitConfig(),
    scoring: ScoringConfig = ScoringConfig(),
    mask: MaskConfig = MaskConfig(),
    unlearn: UnlearnConfig = UnlearnConfig(),
    evaluation: EvalConfig = EvalConfig(),
    axis: Literal["method", "nlr", "band"] = "method",
    methods: list[str] = MATCHED_METHODS,
    nlrs: list[float] = [0.0, 0.2, 0.5, 0.8, 0.95],  # noqa: B006
    bands: list[list[int] | None] = [None],  # noqa: B006
    band: list[int] | None = None,
    lrs: dict[str, list[float]] = DEFAULT_LRS,
    seeds: list[int] = [42, 43, 44],  # noqa: B006
    vary_localization: list[str] = ["cku_random"],  # noqa: B006
    anchor_original: bool = True,
    levels: list[float] | None = None,
    n_levels: int = 5,
    spread: Literal["std", "minmax"] = "std",
    options: RunOptions = RunOptions(),
    align: AlignConfig = AlignConfig(),
) -> dict[str, Any]:
    """Run every point x learning rate x seed and compare utility at matched held-out harmful NLL.

    `axis`: method (`methods`, each at `mask` and `band`), nlr (CKU at each of `nlrs` in bands[0]) or
    band (CKU at mask.nlr in each of `bands`; null = the default band).
    `lrs`: learning-rate grid per label (method name, "nlr=0.8", "layers=8-12"; "default" for the
    rest); it replaces unlearn.lr. `seeds`: training seeds (unlearn.seed). `vary_localization`:
    methods whose localization seed (scoring.seed + seed index) changes with the seed, e.g. a new
    random U for cku_random. `anchor_original`: the original model is the lr-0 end of every curve.
    `levels`: harmful-NLL levels to compare at (default: `n_levels` evenly inside the range every
    curve reaches). `spread`: std (mean ± sample std) or minmax over seeds; "A better than B" is
    claimed only where these intervals do not overlap. `align`: every run (and the anchor) starts from
    the same safety fine-tuned model, as in `cku run`, or from the raw model when off.
    """
    points = grid_points(axis, methods, nlrs, bands, band, mask, lrs)
    check_align(align, data.n_align_harmful)
    if not seeds:
        raise ConfigError("seeds is empty; give at least one training seed (two or more for verdicts)")
    preflight_run(model=model, data=data, scoring=scoring, methods=[p.method for p in points],
                  bands=[p.band for p in points])
    log = open_run(None, run_config(model=model, data=data, scoring=scoring, mask=mask, unlearn=unlearn,
                                    evaluation=evaluation, axis=axis, methods=methods, nlrs=nlrs, bands=bands,
                                    band=band, lrs=lrs, seeds=seeds, vary_localization=vary_localization,
                                    anchor_original=anchor_original, levels=levels, n_levels=n_levels,
                                    spread=spread, options=options, align=align,
                                    lr_grids={p.label: p.lrs for p in points}))
    common = {"model": model, "data": data, "scoring": shared_scoring(axis, points, scoring), "unlearn": unlearn,
              "evaluation": evaluation, "options": options, "align": align}
    runs = []
    if anchor_original:
        original = GridPoint("original", "original", mask, band, [unlearn.lr])
        runs.append(run_point(original, unlearn.lr, unlearn.seed, 0, common, []))
    for i, seed in enumerate(seeds):  # seed outermost: after the first pass, one full comparison exists
        for point in points:
            runs += [run_point(point, lr, seed, i, common, vary_localization) for lr in point.lrs]

    done = [r for r in runs if r["run_id"]]
    publish_comparison(log.run_id, [r["run_id"] for r in done],
                       labels={r["run_id"]: f"{r['label']} lr={r['lr']:g} seed={r['seed']}" for r in done})
    analysis, plot = publish_matched(log.run_id)
    close_run(log, children=[r["run_id"] for r in done])
    return {"run_id": log.run_id, "name": log.name, "runs": runs, "table": analysis.summary_rows(),
            "supported": [v.text() for v in analysis.verdicts if v.supported], "levels": analysis.levels,
            "plot": plot}
