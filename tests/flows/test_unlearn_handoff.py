"""GPU hand-off (issue 8): a pipeline on the cpu pool sends its unlearning stage to the `cku-unlearn`
deployment on the gpu pool (run_deployment) and reads the checkpoint back from the shared store.

Fast tests run in-process (no worker); the slow one starts a real `prefect server`, a cpu and a gpu
process worker, deploys from prefect.yaml and follows the job to the gpu worker."""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cku_core.errors import CKUError
from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore
from flows.presets import PRESETS

GPU_DEVICE = "7"  # the gpu worker's CUDA_VISIBLE_DEVICES: the job must report exactly this one
UNLEARN_DEPLOYMENT = "cku-unlearn/cku-unlearn"


def pipeline_params(**options: Any) -> dict[str, Any]:
    from flows.pipeline import cku_pipeline

    accepted = inspect.signature(cku_pipeline.fn).parameters
    return {**{k: v for k, v in PRESETS["tiny"].items() if k in accepted}, "options": options}


def test_unlearn_deployment_must_name_flow_and_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main as cku

    code = cku(["run", "--preset", "tiny", "--set", "options.unlearn_deployment=cku-unlearn"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "options.unlearn_deployment" in err


@pytest.mark.usefixtures("prefect_local")
def test_handoff_reuses_a_stored_checkpoint_and_names_a_missing_deployment(
        env: tuple[ArtifactStore, ResultsStore]) -> None:
    from flows.pipeline import cku_pipeline

    store, _ = env
    local = cku_pipeline(**pipeline_params())
    # Same inputs: the checkpoint is in the shared store, so no job is started (the deployment does not exist).
    handed = cku_pipeline(**pipeline_params(unlearn_deployment="nowhere/none"))
    assert handed["checkpoint"] == local["checkpoint"] and handed["cached"]["checkpoint"] is True
    assert handed["headline"] == local["headline"]
    # New inputs: a job is needed, and the missing deployment is one actionable line.
    params = pipeline_params(unlearn_deployment="nowhere/none")
    params["unlearn"] = {**params["unlearn"], "lr": 2e-3}
    state = cku_pipeline(**params, return_state=True)
    assert state.is_failed()
    with pytest.raises(CKUError, match=r"deployment 'nowhere/none' not found on the Prefect server; deploy it"):
        state.result()
    assert len(store.keys("checkpoint")) == 1  # nothing was trained in-process instead


# ------------------------------------------------------------------ real server, cpu + gpu workers (slow)
@pytest.fixture(scope="module")
def gpu_worker(prefect_server: Any, prefect_worker: Any) -> Any:
    """A process worker on the gpu pool, one job at a time (`--limit 1`), pinned to device GPU_DEVICE."""
    from tests.conftest import start_process

    worker = start_process("worker-gpu", [sys.executable, "-m", "prefect", "worker", "start", "--pool", "gpu",
                                          "--name", "test-gpu-worker", "--limit", "1"],
                           {**prefect_server.env, "CUDA_VISIBLE_DEVICES": GPU_DEVICE}, prefect_server.log_dir)
    try:
        deadline = time.monotonic() + 60
        while not prefect_server.request("POST", "/work_pools/gpu/workers/filter", {}):
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gpu worker did not register:\n{worker.tail()}")
            time.sleep(1)
        yield worker
    finally:
        worker.stop()


@pytest.mark.slow
def test_pipeline_on_cpu_pool_unlearns_on_gpu_worker(prefect_server: Any, prefect_worker: Any, gpu_worker: Any) -> None:
    from tests.conftest import run_deployment

    proc = prefect_server.prefect("deploy", "--name", "cku-pipeline", "--name", "cku-unlearn", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # A training seed no other test uses: the server's artifact root is shared by the session, and a
    # checkpoint some earlier test stored would be reused without any job (that path is tested above).
    params = pipeline_params(unlearn_deployment=UNLEARN_DEPLOYMENT)
    params["unlearn"] = {**params["unlearn"], "seed": 90417}
    run = run_deployment(prefect_server, "cku-pipeline/cku-pipeline", params, timeout_s=600)
    assert run.state == "COMPLETED", run.output[-3000:] + "\n" + gpu_worker.tail(60)
    assert run.run["work_pool_name"] == "cpu"

    # The job: one cku-unlearn flow run, a subflow of the pipeline, on the gpu pool, picked up by the gpu worker.
    jobs = prefect_server.request("POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["cku-unlearn"]}}})
    job = next(j for j in jobs if prefect_server.request("GET", f"/task_runs/{j['parent_task_run_id']}")["flow_run_id"]
               == run.flow_run_id)
    assert job["state_type"] == "COMPLETED" and job["work_pool_name"] == "gpu"
    submitted = f"submitting flow run '{job['id']}'"  # what a worker logs when it takes a run
    assert submitted in gpu_worker.log.read_text() and submitted not in prefect_worker.log.read_text()
    logs = prefect_server.request("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [job["id"]]}}})
    assert any(f"CUDA_VISIBLE_DEVICES={GPU_DEVICE}," in entry["message"] for entry in logs)
    job_tasks = prefect_server.request("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [job["id"]]}}})
    assert [t["name"].rsplit("-", 1)[0] for t in job_tasks] == ["unlearn"]  # the stage ran there ...
    pipeline_tasks = prefect_server.request("POST", "/task_runs/filter",
                                            {"flow_runs": {"id": {"any_": [run.flow_run_id]}}})
    names = {t["name"].rsplit("-", 1)[0] for t in pipeline_tasks}
    assert "unlearn-handoff" in names and "unlearn" not in names  # ... and not in the pipeline

    # The pipeline read the checkpoint back from the shared store and recorded its results.
    results = ResultsStore(prefect_server.env["CKU_RESULTS_ROOT"])
    runs = {r["run_id"]: r for r in results.list_runs()}
    assert runs[run.flow_run_id]["status"] == "completed"
    _, rows = results.query("SELECT artifact_path, cached FROM stages WHERE run_id = ? AND stage = 'checkpoint'",
                            [run.flow_run_id])
    assert len(rows) == 1 and rows[0][1] is False
    checkpoint = Path(rows[0][0])
    assert ArtifactStore(prefect_server.env["CKU_ARTIFACT_ROOT"]).get("checkpoint", checkpoint.name) is not None
    _, rows = results.query("SELECT count(*) FROM metrics WHERE run_id = ?", [run.flow_run_id])
    assert rows[0][0] > 0
