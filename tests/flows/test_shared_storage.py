"""Two workers that share nothing but an S3 bucket (moto): the first `cku run --preset tiny` computes
every stage; the second, with its own Prefect home, result folder, temporary Prefect server and
local cache, gets every expensive stage as a Prefect cache hit (state Cached) and uploads nothing.
A bucket that does not exist or an endpoint that does not answer is one line, exit 2, nothing written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cku_core.results import ResultsStore

REPO = Path(__file__).resolve().parents[2]
RUN = ["-m", "flows.cli", "run", "--preset", "tiny", "--set", "methods=[cku]"]


def worker_env(s3, base: Path, name: str) -> dict[str, str]:  # noqa: ANN001
    """A machine of its own: no Prefect server (a temporary one per process), its own home, caches."""
    (base / name / "prefect-home").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CKU_"))}
    env.update(s3.env)
    env.update({
        "CKU_ARTIFACT_ROOT": s3.url("cku/artifacts"), "CKU_RESULTS_ROOT": s3.url("cku/results"),
        "CKU_CACHE_DIR": str(base / name / "cache"), "PREFECT_HOME": str(base / name / "prefect-home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(base / name / "prefect-storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 2 shared cores: the default 20 s is short
        "PYTHONPATH": str(REPO),
    })
    return env


def cku(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def stage_rows(results: ResultsStore, run_ids: set[str]) -> list[tuple[str, str, bool]]:
    marks = ", ".join("?" for _ in run_ids)
    return results.query(f"SELECT stage, prefect_state, cached FROM stages WHERE run_id IN ({marks}) ORDER BY stage",
                         sorted(run_ids))[1]


@pytest.mark.slow
def test_second_worker_hits_every_cache_from_the_bucket(s3, tmp_path: Path) -> None:  # noqa: ANN001
    first = cku(worker_env(s3, tmp_path, "one"), *RUN)
    assert first.returncode == 0, first.stderr[-4000:]
    results = ResultsStore(s3.url("cku/results"))
    runs_before = {r["run_id"] for r in results.list_runs()}
    fs = s3.fs()
    artifacts_before = sorted(fs.find(f"{s3.bucket}/cku/artifacts/", withdirs=False))
    assert any("/.prefect-results/cku-checkpoint-" in p for p in artifacts_before)   # Prefect's records, in S3
    assert not any(Path(tmp_path / "one" / "prefect-storage").rglob("cku-*"))        # and not on local disk

    second_env = worker_env(s3, tmp_path, "two")
    second = cku(second_env, *RUN)
    assert second.returncode == 0, second.stderr[-4000:]

    new_runs = {r["run_id"] for r in results.list_runs()} - runs_before
    rows = stage_rows(results, new_runs)
    stages = {stage for stage, _, _ in rows}
    assert {"model", "reference", "examples", "scores", "mask", "checkpoint", "evaluation"} <= stages, rows
    # Every expensive stage is a Prefect cache hit; `data` re-reads its sources on purpose (cheap) and
    # then reuses its artifact (see tests/flows/test_pipeline.py).
    assert {(s, state) for s, state, _ in rows if s != "data"} == {(s, "Cached") for s in stages - {"data"}}, rows
    assert all(cached for _, _, cached in rows), rows
    # Nothing was recomputed: apart from Prefect's flow-run results, the bucket holds the same objects.
    artifacts_after = sorted(p for p in fs.find(f"{s3.bucket}/cku/artifacts/", withdirs=False))
    stage_objects = lambda paths: [p for p in paths if "/.prefect-results/" not in p]  # noqa: E731
    assert stage_objects(artifacts_after) == stage_objects(artifacts_before)


@pytest.mark.parametrize("problem", ["bucket_missing", "endpoint_unreachable"])
def test_bad_object_store_is_one_line_exit_2(s3, tmp_path: Path, problem: str) -> None:  # noqa: ANN001
    import socket

    env = worker_env(s3, tmp_path, "w")
    if problem == "bucket_missing":
        env["CKU_ARTIFACT_ROOT"] = "s3://no-such-bucket-cku/artifacts"
        expected = ["no-such-bucket-cku", "does not exist", "CKU_ARTIFACT_ROOT"]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env["CKU_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
        expected = ["cannot reach the object store", f"127.0.0.1:{port}", "CKU_S3_ENDPOINT_URL"]
    proc = cku(env, *RUN, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert all(text in lines[0] for text in expected), lines[0]
    assert s3.fs().find(f"{s3.bucket}/") == []                   # nothing written to the real bucket
    assert not (tmp_path / "w" / "cache").exists()               # nor staged locally
