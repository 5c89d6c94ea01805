"""prefect.yaml for real: a `prefect server start`, work pools, a `prefect worker start --pool cpu`,
`prefect deploy --all`, and the `cku-pipeline` deployment run to completion with the tiny preset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cku_core.results import ResultsStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def test_prefect_yaml_declares_the_deployments() -> None:
    spec = prefect_yaml()
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert {"cku-pipeline", "cku-pipeline-gpu", "cku-sweep-nightly", "cku-evaluate", "cku-baselines"} <= set(by_name)
    assert by_name["cku-pipeline"]["entrypoint"] == "flows/pipeline.py:cku_pipeline"
    assert by_name["cku-pipeline"]["work_pool"]["name"] == "cpu"
    nightly = by_name["cku-sweep-nightly"]
    assert nightly["schedules"][0]["cron"] and nightly["work_pool"]["name"] == "gpu"
    assert nightly["work_pool"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    text = (REPO / "prefect.yaml").read_text()
    for documented in ("PREFECT_SERVER_ANALYTICS_ENABLED=false", "--host 127.0.0.1", "prefect work-pool create cpu",
                       "prefect worker start --pool cpu", "prefect --no-prompt deploy --all",
                       "prefect concurrency-limit create gpu 1"):
        assert documented in text, documented


def test_every_entrypoint_loads() -> None:
    import importlib

    for d in prefect_yaml()["deployments"]:
        path, name = d["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert hasattr(getattr(module, name), "deploy"), d["entrypoint"]  # a Prefect flow


def test_deploy_all_registers_schedules_and_pools(prefect_server, deployed_pipeline_run) -> None:  # type: ignore[no-untyped-def]
    deployments = {d["name"]: d for d in prefect_server.request("POST", "/deployments/filter", {})}
    assert {"cku-pipeline", "cku-sweep-nightly", "cku-evaluate", "cku-baselines"} <= set(deployments)
    nightly = deployments["cku-sweep-nightly"]
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert nightly["work_pool_name"] == "gpu"
    assert nightly["job_variables"]["env"] == {"CUDA_VISIBLE_DEVICES": "0"}
    assert deployments["cku-pipeline"]["work_pool_name"] == "cpu"
    limits = prefect_server.request("POST", "/concurrency_limits/filter", {})
    assert any(limit["tag"] == "gpu" and limit["concurrency_limit"] == 1 for limit in limits)


def test_pipeline_deployment_runs_to_completion(prefect_server, deployed_pipeline_run) -> None:  # type: ignore[no-untyped-def]
    run = deployed_pipeline_run
    assert run.state == "COMPLETED"
    assert run.run["deployment_id"] is not None
    # The flow ran in the worker's subprocess and wrote its results where the worker's env points.
    results = ResultsStore(prefect_server.env["CKU_RESULTS_ROOT"])
    runs = {r["run_id"]: r for r in results.list_runs()}
    assert runs[run.flow_run_id]["status"] == "completed" and runs[run.flow_run_id]["name"] == run.name
    _, rows = results.query("SELECT count(*) FROM metrics WHERE run_id = ?", [run.flow_run_id])
    assert rows[0][0] > 0
    # Tasks carry the gpu tag where they use the accelerator (the concurrency limit applies to them).
    task_runs = prefect_server.request("POST", "/task_runs/filter",
                                       {"flow_runs": {"id": {"any_": [run.flow_run_id]}}})
    tagged = {t["name"].rsplit("-", 1)[0] for t in task_runs if "gpu" in t["tags"]}
    assert {"unlearn", "score-neurons", "evaluate"} <= tagged
    assert all(t["state_type"] == "COMPLETED" for t in task_runs)
