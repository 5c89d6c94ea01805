"""`compare-baselines`: CKU beside GA, GradDiff, NPO, CKU with a random U, CKU with NLR 0 and the
original model, on the same data and evaluation (each a `cku-pipeline` subflow sharing cached stages).

Methods are compared at one learning rate here; compare them at matched forgetting (equal
knowledge NLL) by sweeping `unlearn.lr` or `unlearn.steps` per method (see docs of the method).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from cku_core.align import AlignConfig, check_align
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.errors import ConfigError
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.methods import METHODS, get_method
from flows._runs import close_run, open_run, publish_comparison, record_failure
from flows.pipeline import cku_pipeline, run_config
from tasks.params import ModelConfig, RunOptions

DEFAULT_METHODS = ["original", "cku", "cku_random", "cku_nlr0", "ga", "graddiff", "npo"]
# The main job (`cku run`): the original model, CKU, GA without a mask, CKU with a random U.
MAIN_METHODS = ["original", "cku", "ga", "cku_random"]


@flow(name="compare-baselines", on_failure=[record_failure], on_crashed=[record_failure])
def compare_baselines(
    model: ModelConfig = ModelConfig(),
    data: SplitConfig = SplitConfig(),
    scoring: ScoringConfig = ScoringConfig(),
    mask: MaskConfig = MaskConfig(),
    unlearn: UnlearnConfig = UnlearnConfig(),
    evaluation: EvalConfig = EvalConfig(),
    methods: list[str] = DEFAULT_METHODS,  # noqa: B006 - Prefect parameters are copied, never mutated
    band: list[int] | None = None,
    options: RunOptions = RunOptions(),
    method_overrides: dict[str, dict[str, Any]] = {},  # noqa: B006 - Prefect parameters are copied
    align: AlignConfig = AlignConfig(),
) -> dict[str, Any]:
    """One pipeline run per method; returns each method's run id and headline metrics.

    `method_overrides` changes `unlearn` fields per method, e.g. {"ga": {"lr": 5e-5}}: methods that
    move different numbers of weights need different learning rates to forget about as much, and a
    comparison is only fair at matched forgetting (see the knowledge NLL column). `align`: every method
    starts from the same safety fine-tuned model (computed once, cached), or from the raw model when off.
    """
    check_align(align, data.n_align_harmful)
    for name in methods:
        get_method(name)  # fail on a typo before any work
    log = open_run(None, run_config(model=model, data=data, scoring=scoring, mask=mask, unlearn=unlearn,
                                    evaluation=evaluation, methods=methods, band=band, options=options,
                                    method_overrides=method_overrides, align=align))
    runs = {}
    unknown = set(method_overrides) - set(methods)
    if unknown:
        raise ConfigError(f"method_overrides names methods that are not run: {sorted(unknown)}; use some of {methods}")
    for name in methods:
        method_unlearn = UnlearnConfig.model_validate({**unlearn.model_dump(), **method_overrides.get(name, {})})
        out = cku_pipeline(model=model, data=data, scoring=scoring, mask=mask, unlearn=method_unlearn,
                           evaluation=evaluation, method=name, band=band, options=options, align=align)
        runs[name] = {"run_id": out["run_id"], "headline": out["headline"]}
    table = publish_comparison(log.run_id, [r["run_id"] for r in runs.values()])
    close_run(log, children=[r["run_id"] for r in runs.values()])
    return {"run_id": log.run_id, "name": log.name, "methods": runs, "table": table, "known_methods": list(METHODS)}
