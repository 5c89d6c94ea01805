"""`cku-relearn`: the relearning attack on CKU vs the baselines. How fast does the knowledge come back?

    model ─► data ─► original-model reference ─────────────────────────────────────────────┐
                 └─► examples ─► [scores ─► U] ─► unlearn (per method) ─► relearn (per data kind) ─► record

Each method's checkpoint comes from the same cached stages as `cku-pipeline` (a pipeline or sweep
run with the same settings is reused); the original model is relearned too, as the ceiling. The
curve's rows go to the `metrics` table with `relearn_step` and `relearn_data` set:

    cku query "SELECT method, relearn_data, relearn_step AS k, round(value, 3) AS harmful_nll FROM metrics
               WHERE metric = 'knowledge_nll' AND relearn_step IS NOT NULL ORDER BY method, relearn_data, k"
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from cku_core.align import AlignConfig, check_align
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.errors import ConfigError
from cku_core.eval.config import EvalConfig
from cku_core.eval.splits import SplitConfig
from cku_core.fingerprint import json_digest
from cku_core.methods import get_method, method_configs
from cku_core.preflight import preflight_run
from cku_core.relearn import RelearnConfig
from flows._runs import RunLog, close_run, open_run, record_failure
from flows.pipeline import prepare_inputs, run_config, training_examples
from tasks.mask import mask_stage
from tasks.params import ModelConfig, RunOptions
from tasks.record import record_results
from tasks.relearn import record_relearn, relearn_stage
from tasks.scoring import score_stage
from tasks.unlearn import unlearn_stage

DataKind = Literal["forget", "benign"]


def unlearned_checkpoint(log: RunLog, method: str, m: dict[str, Any], ex: dict[str, Any], unlearn: UnlearnConfig,
                         scoring: ScoringConfig, mask: MaskConfig, band: list[int] | None,
                         options: RunOptions) -> dict[str, Any]:
    """The method's checkpoint through the pipeline's own stages (so their cache entries are shared)."""
    u_cfg, s_cfg, m_cfg = method_configs(method, unlearn, scoring, mask)
    if u_cfg is None:
        return m  # the original model
    layers = band if band is not None else scoring.layers
    retained = None
    if s_cfg is not None and m_cfg is not None:
        scores = log.stage(score_stage, m, ex, s_cfg, device=options.device)
        retained = log.stage(mask_stage, m, scores, m_cfg, layers)
    return log.stage(unlearn_stage, m, ex, u_cfg, retained, layers, options.max_unlearn_seconds,
                     checkpoint_every=options.checkpoint_every)


@flow(name="cku-relearn", on_failure=[record_failure], on_crashed=[record_failure])
def cku_relearn(
    model: ModelConfig = ModelConfig(),
    data: SplitConfig = SplitConfig(),
    scoring: ScoringConfig = ScoringConfig(),
    mask: MaskConfig = MaskConfig(),
    unlearn: UnlearnConfig = UnlearnConfig(),
    evaluation: EvalConfig = EvalConfig(),
    relearn: RelearnConfig = RelearnConfig(),
    data_kinds: list[DataKind] = ["forget"],  # noqa: B006 - Prefect parameters are copied, never mutated
    methods: list[str] = ["original", "cku", "ga"],  # noqa: B006
    method_overrides: dict[str, dict[str, Any]] = {},  # noqa: B006
    band: list[int] | None = None,
    options: RunOptions = RunOptions(),
    align: AlignConfig = AlignConfig(),
) -> dict[str, Any]:
    """Relearn each method's unlearned model on each data kind; returns the curves and the run id.

    `data_kinds` replaces `relearn.data` (one curve per kind). `method_overrides` changes `unlearn`
    fields per method, as in compare-baselines (e.g. {"ga": {"lr": 5e-5}} for matched forgetting).
    `evaluation` gives the reference (held-out prompts, original answers) and the judges; the attacks
    measured after each k are `relearn.attacks` on `relearn.n_attack_prompts` prompts. `align`: every
    method (and "original") starts from the safety fine-tuned model, as in `cku run`.
    """
    for name in methods:
        get_method(name)
    unknown = set(method_overrides) - set(methods)
    if unknown:
        raise ConfigError(f"method_overrides names methods that are not run: {sorted(unknown)}; use some of {methods}")
    preflight_run(model=model, data=data, scoring=scoring, mask=mask, unlearn=unlearn, methods=methods,
                  method_overrides=method_overrides, band=band)
    check_align(align, data.n_align_harmful)
    log = open_run(None, run_config(model=model, data=data, scoring=scoring, mask=mask, unlearn=unlearn,
                                    evaluation=evaluation, relearn=relearn, data_kinds=data_kinds, methods=methods,
                                    method_overrides=method_overrides, band=band, options=options, align=align))
    m, d, ref = prepare_inputs(log, model, data, evaluation, options, align)
    ex = training_examples(log, m, d, evaluation, options)
    curves: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in methods:
        method_unlearn = UnlearnConfig.model_validate({**unlearn.model_dump(), **method_overrides.get(name, {})})
        checkpoint = unlearned_checkpoint(log, name, m, ex, method_unlearn, scoring, mask, band, options)
        provenance = {"model_digest": checkpoint["info"]["fingerprint"], "config_digest": json_digest(log.config)}
        for kind in data_kinds:
            out = log.stage(relearn_stage, checkpoint, ex, d, ref, relearn.model_copy(update={"data": kind}),
                            evaluation, device=options.device)
            record_relearn(log.run_id, name, out, provenance)
            curves.setdefault(name, {})[kind] = out["info"]["curve"]
    record_results(log.run_id, "relearn", log.stages, None, None, {})  # the `stages` rows
    close_run(log)
    table = [{"method": name, "data": kind, "k": p["k"], "harmful_nll": p["knowledge_nll"], "asr": p["asr"]}
             for name, by_kind in curves.items() for kind, points in by_kind.items() for p in points]
    return {"run_id": log.run_id, "name": log.name, "curves": curves, "table": table,
            "relearn_cached": [s["cached"] for s in log.stages if s["stage"] == "relearn"]}
