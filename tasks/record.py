"""Stage `record`: write a run's rows into the results store (Parquet parts, one per run and stage).

Never cached: recording is what makes a run visible to `cku query`, and it is cheap. Each call
writes its own immutable parts, so concurrent runs never contend.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cku_core.fingerprint import json_digest
from cku_core.results import ResultsStore
from cku_core.version import CODE_VERSION
from tasks.evaluate import load_metrics, load_rows

PACKAGES = ("cku", "torch", "transformers", "prefect", "duckdb", "pyarrow", "datasets", "safetensors", "pydantic")
PRIMARY_JUDGES = ("llm", "refusal_keyword")  # the first one present gives `generations.harmful`


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_row(*, flow: str, name: str, method: str | None, config: dict[str, Any], status: str,
            started_at: datetime | None, finished_at: datetime | None = None, model_digest: str | None = None,
            data_digest: str | None = None, timings: dict[str, float] | None = None,
            parent_run_id: str | None = None) -> dict[str, Any]:
    """One `runs` row; the latest row of a run is what the `runs` view shows."""
    return {"flow": flow, "name": name, "method": method, "config": config, "model_digest": model_digest,
            "data_digest": data_digest, "config_digest": json_digest(config), "code_version": CODE_VERSION,
            "package_versions": package_versions(), "started_at": started_at, "finished_at": finished_at,
            "status": status, "timings": timings or {}, "parent_run_id": parent_run_id}


@task(name="record-run", cache_policy=NO_CACHE)
def record_run(run_id: str, stage: str, row: dict[str, Any]) -> None:
    """Append one `runs` row (stage 'start', 'finish' or 'failed')."""
    ResultsStore().write_rows("runs", run_id, stage, [row])


def _verdicts(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    judges = [j for j in json.loads(row.get("judge_versions") or "{}") if j != "degenerate"]
    return {j: {"harmful": row.get(f"{j}_harmful"), "score": row.get(f"{j}_score"), "label": row.get(f"{j}_label")}
            for j in judges}


def generation_row(row: dict[str, Any], method: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """An evaluation response row (cku_core.eval.rows.ResponseRow.as_dict) as a `generations` row."""
    verdicts = _verdicts(row)
    primary = next((j for j in PRIMARY_JUDGES if j in verdicts), None)
    keep = ("prompt_id", "dataset", "category", "subset", "prompt", "attack", "attack_version", "family",
            "user_message", "prefill", "response", "n_tokens", "hit_eos", "degenerate", "degenerate_reason",
            "judge_versions")
    return {**{k: row.get(k) for k in keep}, "method": method, "sample": row.get("sample_index"),
            "settings": row.get("gen_settings"), "verdicts": verdicts,
            "harmful": verdicts[primary]["harmful"] if primary else None, **provenance}


@task(name="record-results", cache_policy=NO_CACHE)
def record_results(run_id: str, method: str, stages: list[dict[str, Any]], evaluation: dict[str, Any] | None,
                   mask: dict[str, Any] | None, provenance: dict[str, Any]) -> dict[str, int]:
    """Write the stages, metrics, generations and mask statistics of one run; returns row counts."""
    results = ResultsStore()
    counts = {"stages": len(stages)}
    results.write_rows("stages", run_id, "record", stages)
    if evaluation is not None:
        metrics = [{**{k: m.get(k) for k in ("metric", "value", "judge", "attack", "family", "subset", "n")},
                    "method": method, **provenance} for m in load_metrics(evaluation["ref"])]
        generations = [generation_row(r, method, provenance) for r in load_rows(evaluation["ref"])]
        results.write_rows("metrics", run_id, "evaluation", metrics)
        results.write_rows("generations", run_id, "evaluation", generations)
        counts.update(metrics=len(metrics), generations=len(generations))
    if mask is not None:
        results.write_rows("mask_stats", run_id, "mask", mask["info"]["stats"])
        counts["mask_stats"] = len(mask["info"]["stats"])
    return counts


def now() -> datetime:
    return datetime.now(timezone.utc)
