"""Fan a sweep's grid points out on a Dask or Ray cluster (tasks.params.ScaleOutConfig).

Each point is one Prefect task, `sweep-point`, that runs the whole `cku-pipeline` flow for that point
inside the worker process: the point is then the same pipeline run as in a sequential sweep (its own
run in the UI and the results store, `parent_run_id` = the sweep, the same stages and rows), only
executed elsewhere. Its shared stages (model ... scores) were computed by the sweep before fanning
out, so in the worker they are cache hits and no two workers race to compute them.

A worker process does not share this process's environment: a Prefect task on Dask/Ray carries the
flow's Prefect settings (API URL, result storage) in its serialized context, but not cku's roots, so
they travel as a task parameter (absolute paths or URLs), and torch's thread count is set per point.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect import task
from prefect.cache_policies import NO_CACHE

from cku_core.errors import ConfigError
from tasks.params import ScaleOutConfig

# The package that provides each runner, and the pip extra that installs it (pyproject.toml).
RUNNER_PACKAGES = {"dask": ("prefect_dask", "cku[cluster]"), "ray": ("prefect_ray", "cku[ray]")}
DEFAULT_PORTS = {"dask": 8786, "ray": 10001}
CONNECT_TIMEOUT_S = 3.0


# ------------------------------------------------------------------ preflight
def check_scale_out(cfg: ScaleOutConfig) -> None:
    """Fail in about a second, with one line, when the runner is not installed or the cluster does not answer."""
    if cfg.task_runner == "sequential":
        return
    module, extra = RUNNER_PACKAGES[cfg.task_runner]
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"scale_out.task_runner {cfg.task_runner!r} needs {module.replace('_', '-')}, which is not "
                          f"installed: pip install '{extra}' (or use task_runner 'sequential')") from None
    if cfg.address is not None:
        check_reachable(cfg.address, cfg.task_runner)


def cluster_endpoint(address: str, runner: str) -> tuple[str, int] | None:
    """(host, port) that a scheduler/head at `address` listens on; None for Ray's 'auto' (found by Ray itself)."""
    if runner == "ray" and address in ("auto", "local"):
        return None
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        port = parts.port or DEFAULT_PORTS[runner]
    except ValueError:  # a port that is not a number
        port = None
    if not parts.hostname or port is None:
        scheme = "ray://host:10001" if runner == "ray" else "tcp://host:8786"
        raise ConfigError(f"scale_out.address {address!r} is not a cluster address; write it as {scheme}")
    return parts.hostname, port


def check_reachable(address: str, runner: str) -> None:
    """A TCP connect to the scheduler (Dask) or head node (Ray): a typo or a stopped cluster fails here, not mid-sweep."""
    endpoint = cluster_endpoint(address, runner)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        what = "Dask scheduler" if runner == "dask" else "Ray head node"
        raise ConfigError(f"scale_out.address {address}: no {what} answers there ({exc.strerror or exc}); start the "
                          "cluster, fix the address, or set it to null to start a local cluster") from None


# ------------------------------------------------------------------ runners
def task_runner(cfg: ScaleOutConfig) -> Any:
    """The Prefect task runner the points are submitted to (a context manager; entering it starts a local cluster)."""
    check_scale_out(cfg)
    local_cpus = cfg.n_workers * cfg.threads_per_worker
    if cfg.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.address is not None:
            return DaskTaskRunner(address=cfg.address)
        # Worker processes (not threads): torch and the GIL. Loopback only, no dashboard port opened.
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers, "threads_per_worker": cfg.threads_per_worker,
                                              "processes": True, "host": "127.0.0.1", "dashboard_address": None})
    if cfg.task_runner == "ray":
        from prefect_ray import RayTaskRunner

        if cfg.address is not None:
            return RayTaskRunner(address=cfg.address)
        # Ray runs one task per CPU it is given: this many points at once.
        return RayTaskRunner(init_kwargs={"num_cpus": local_cpus, "include_dashboard": False})
    raise ConfigError(f"scale_out.task_runner {cfg.task_runner!r} has no task runner; use 'dask' or 'ray'")


def worker_environment() -> dict[str, str]:
    """This process's CKU_* settings, the roots as absolute paths (or URLs): a worker's working directory
    and environment may differ. Credentials (e.g. AWS_*) never travel: workers bring their own."""
    from cku_core.results import DEFAULT_ROOT as RESULTS_DEFAULT
    from cku_core.results import ROOT_ENV as RESULTS_ENV
    from cku_core.store import DEFAULT_ROOT as ARTIFACTS_DEFAULT
    from cku_core.store import ROOT_ENV as ARTIFACTS_ENV

    env = {k: v for k, v in os.environ.items() if k.startswith("CKU_")}
    for name, default in ((ARTIFACTS_ENV, ARTIFACTS_DEFAULT), (RESULTS_ENV, RESULTS_DEFAULT)):
        value = os.environ.get(name) or str(default)
        env[name] = value if "://" in value else str(Path(value).absolute())
    return env


def worker_name() -> str:
    """host:pid of the process running a point (recorded in the sweep's output)."""
    return f"{socket.gethostname()}:{os.getpid()}"


@task(name="sweep-point", cache_policy=NO_CACHE, retries=0)
def sweep_point(parameters: dict[str, Any], environment: dict[str, str], torch_threads: int) -> dict[str, Any]:
    """One grid point as a `cku-pipeline` run, in whichever worker process the task runner chose.

    Not cached itself: its stages are, and a point must always leave its own run in the results store.
    """
    import torch

    from flows.pipeline import cku_pipeline

    os.environ.update(environment)
    torch.set_num_threads(torch_threads)  # n_workers x torch_threads <= cores, else the workers fight
    return {**cku_pipeline(**parameters), "worker": worker_name()}


def run_points(points: Sequence[dict[str, Any]], cfg: ScaleOutConfig) -> list[dict[str, Any]]:
    """Submit every point to the runner, wait for all, return their outputs in grid order.

    A failed point fails the sweep, as in a sequential sweep; leaving the runner stops a local cluster.
    """
    env = worker_environment()
    with task_runner(cfg) as runner:
        futures = [runner.submit(sweep_point, {"parameters": dict(p), "environment": env,
                                               "torch_threads": cfg.torch_threads}) for p in points]
        for future in futures:
            future.wait()
        return [future.result() for future in futures]
