"""Shared fixtures: isolated artifact/results roots, an in-process Prefect API for flow tests, and
(slow tests) a real `prefect server start` + `prefect worker start` deploying from prefect.yaml.

Everything a fixture starts it also stops, by pid (its own process group), with a SIGKILL fallback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore

REPO = Path(__file__).resolve().parent.parent
TEST_ARTIFACTS = REPO / "test-artifacts"  # gitignored: screenshots and logs kept for humans


@pytest.fixture(autouse=True)
def _isolated_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever writes into the checkout's artifacts/ or results/."""
    monkeypatch.setenv("CKU_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("CKU_RESULTS_ROOT", str(tmp_path / "results"))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def results(tmp_path: Path) -> ResultsStore:
    return ResultsStore(tmp_path / "results")


@pytest.fixture(scope="session")
def test_artifacts_dir() -> Path:
    TEST_ARTIFACTS.mkdir(exist_ok=True)
    return TEST_ARTIFACTS


@pytest.fixture(scope="session")
def prefect_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One temporary Prefect API for the session's in-process flow runs (starting one costs 7-12 s).

    PREFECT_HOME and the result storage go to temp folders: the harness isolates the database, not
    the result files, and cached task results must not leak between test sessions.
    """
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    base = tmp_path_factory.mktemp("prefect-local")
    saved = {k: os.environ.get(k) for k in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ.update({"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    try:
        with temporary_settings({PREFECT_HOME: base / "home", PREFECT_RESULTS_LOCAL_STORAGE_PATH: base / "storage",
                                 PREFECT_SERVER_ANALYTICS_ENABLED: False}):
            with prefect_test_harness(server_startup_timeout=120):
                yield base / "storage"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- real Prefect server + worker (slow)

SERVER_START_TIMEOUT_S = 120
TERMINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Started:
    """A process a fixture started in its own session (process group = its pid), with its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group we created, then SIGKILL what is left (a worker once ignored SIGTERM)."""
        pgid = self.proc.pid
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:  # children of the group may outlive the leader
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def start_process(name: str, cmd: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO) -> Started:
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Started(name, proc, log)


@dataclass
class PrefectServer:
    url: str                      # http://127.0.0.1:PORT
    env: dict[str, str]           # environment for every prefect CLI / worker subprocess
    home: Path
    log_dir: Path
    process: Started
    children: list[Started] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.url + "/api"

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict | list:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.api + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the prefect CLI against this server (from the repo root, non-interactive)."""
        return subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], env=self.env, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    def wait_flow_run(self, flow_run_id: str, timeout_s: float = 600) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.request("GET", f"/flow_runs/{flow_run_id}")
            if run["state_type"] in TERMINAL_STATES:
                return run
            time.sleep(1)
        raise TimeoutError(f"flow run {flow_run_id} did not finish in {timeout_s} s")


def _wait_healthy(server: Started, url: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"prefect server exited with {server.proc.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s:\n{server.tail()}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real `prefect server start` (through `cku server`) on a free loopback port, temp PREFECT_HOME."""
    base = tmp_path_factory.mktemp("prefect")
    home, logs = base / "home", base / "logs"
    home.mkdir()
    logs.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url + "/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(base / "results-storage"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",   # pick up new runs quickly
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "CKU_ARTIFACT_ROOT": str(base / "artifacts"),
        "CKU_RESULTS_ROOT": str(base / "results"),
    })
    server = start_process("server", [sys.executable, "-m", "flows.cli", "server", "--port", str(port)], env, logs)
    fixture = PrefectServer(url=url, env=env, home=home, log_dir=logs, process=server)
    try:
        _wait_healthy(server, url)
        yield fixture
    finally:
        for child in reversed(fixture.children):
            child.stop()
        server.stop()
        _keep_logs(logs)


def _keep_logs(logs: Path) -> None:
    """Copy the server/worker logs next to the screenshots, for whoever debugs a failure."""
    TEST_ARTIFACTS.mkdir(exist_ok=True)
    for log in logs.glob("*.log"):
        try:
            (TEST_ARTIFACTS / f"prefect-{log.name}").write_bytes(log.read_bytes())
        except OSError:
            pass


@pytest.fixture(scope="session")
def prefect_worker(prefect_server: PrefectServer) -> Started:
    """Work pools from prefect.yaml's instructions, and a real `prefect worker start --pool cpu`."""
    for pool in ("cpu", "gpu"):
        proc = prefect_server.prefect("work-pool", "create", pool, "--type", "process", "--overwrite")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = prefect_server.prefect("concurrency-limit", "create", "gpu", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    worker = start_process("worker-cpu", [sys.executable, "-m", "prefect", "worker", "start", "--pool", "cpu",
                                          "--name", "test-cpu-worker"], prefect_server.env, prefect_server.log_dir)
    prefect_server.children.append(worker)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = prefect_server.request("POST", "/work_pools/cpu/workers/filter", {})
        if workers:
            return worker
        if worker.proc.poll() is not None:
            pytest.fail(f"worker exited with {worker.proc.returncode}:\n{worker.tail()}")
        time.sleep(1)
    pytest.fail(f"worker did not register in 60 s:\n{worker.tail()}")


@dataclass
class DeployedRun:
    flow_run_id: str
    name: str
    state: str
    output: str
    run: dict


def run_deployment(server: PrefectServer, deployment: str, params: dict, timeout_s: float = 600) -> DeployedRun:
    """`prefect deployment run NAME --params JSON --watch`, then read the final flow run from the API."""
    proc = server.prefect("deployment", "run", deployment, "--params", json.dumps(params), "--watch",
                          "--watch-timeout", str(int(timeout_s)), timeout=timeout_s + 60)
    out = proc.stdout + proc.stderr
    uuid_match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert uuid_match, f"no flow run created:\n{out}"
    run = server.wait_flow_run(uuid_match.group(1), timeout_s=60)
    return DeployedRun(flow_run_id=run["id"], name=run["name"], state=run["state_type"], output=out, run=run)




@pytest.fixture(scope="session")
def deployed_pipeline_run(prefect_server: PrefectServer, prefect_worker: Started) -> DeployedRun:
    """`prefect deploy --all` from prefect.yaml, then the real `cku-pipeline` deployment run to the end
    by the cpu worker with the tiny preset as parameters."""
    from flows.presets import PRESETS

    proc = prefect_server.prefect("deploy", "--all", timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run = run_deployment(prefect_server, "cku-pipeline/cku-pipeline", PRESETS["tiny"], timeout_s=600)
    if run.state != "COMPLETED":
        worker = next((c for c in prefect_server.children if c.name == "worker-cpu"), None)
        pytest.fail(f"deployment run ended {run.state}:\n{run.output[-3000:]}\n--- worker log ---\n"
                    f"{worker.tail(80) if worker else ''}")
    return run


# ---------------------------------------------------------------- S3-compatible object store (moto)

@dataclass
class S3:
    """A moto S3 server on loopback, a fresh bucket for one test, and the environment that points at it."""

    endpoint: str
    bucket: str
    env: dict[str, str]

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def fs(self):  # noqa: ANN201 - s3fs.S3FileSystem, imported lazily
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="cku-test", secret="cku-test",
                                 use_listings_cache=False, skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's threaded server (S3 API, conditional puts included) on a free 127.0.0.1 port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3:
    """Credentials, endpoint and a local cache folder in the environment, and an empty bucket of its own."""
    import uuid

    env = {"AWS_ACCESS_KEY_ID": "cku-test", "AWS_SECRET_ACCESS_KEY": "cku-test", "AWS_DEFAULT_REGION": "us-east-1",
           "CKU_S3_ENDPOINT_URL": s3_endpoint, "CKU_CACHE_DIR": str(tmp_path / "cache")}
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "CKU_STORAGE_OPTIONS",
                 "CKU_PREFECT_RESULTS_ROOT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"cku-{uuid.uuid4().hex[:12]}"
    fixture = S3(endpoint=s3_endpoint, bucket=bucket, env=env)
    fixture.fs().mkdir(bucket)
    return fixture
