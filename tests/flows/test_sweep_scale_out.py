"""`cku-sweep` fanned out on Dask (issue 8): the same results as a sequential sweep, every row of every
worker in the results store, and bad scale-out settings rejected in one line before any run exists."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cku_core.results import ResultsStore
from flows.cli import main as cku
from flows.presets import PRESETS
from tasks.params import ScaleOutConfig

NLRS = [0.0, 0.5, 0.9]  # 3 points on 2 workers: both get work, one runs two
TIMING_METRICS = ("eval_seconds", "generation_seconds", "tokens_per_s")  # wall-clock, differ run to run
TABLES = ("runs", "stages", "metrics", "generations", "mask_stats")


# ------------------------------------------------------------------ bad input: one line, no run (fast)
def sweep_cli(capsys: pytest.CaptureFixture[str], *sets: str) -> tuple[int, str]:
    code = cku(["sweep", "--preset", "tiny", *[arg for s in sets for arg in ("--set", s)]])
    return code, capsys.readouterr().err.strip()


def test_unknown_task_runner_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = sweep_cli(capsys, "scale_out.task_runner=spark")
    assert code == 2 and len(err.splitlines()) == 1
    assert "scale_out.task_runner" in err and "'sequential', 'dask' or 'ray'" in err


def test_ray_without_prefect_ray_names_the_extra(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prefect_ray", None)  # as if not installed, whatever this venv has
    code, err = sweep_cli(capsys, "scale_out.task_runner=ray")
    assert code == 2 and len(err.splitlines()) == 1
    assert "prefect-ray" in err and "pip install 'cku[ray]'" in err


def test_unreachable_cluster_address_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = sweep_cli(capsys, "scale_out.task_runner=dask", f"scale_out.address=tcp://127.0.0.1:{port}")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"scale_out.address tcp://127.0.0.1:{port}: no Dask scheduler answers there" in err
    assert "null to start a local cluster" in err
    assert not (tmp_path / "results").exists()  # nothing was recorded: no run was created
    code, err = sweep_cli(capsys, "scale_out.task_runner=dask", "scale_out.address=tcp://host:port")
    assert code == 2 and "is not a cluster address; write it as tcp://host:8786" in err


def test_local_dask_cluster_is_loopback_only_with_the_configured_workers() -> None:
    from prefect_dask import DaskTaskRunner

    from flows._fanout import task_runner

    runner = task_runner(ScaleOutConfig(task_runner="dask", n_workers=3, threads_per_worker=2))
    assert isinstance(runner, DaskTaskRunner) and runner.address is None
    assert runner.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 2, "processes": True, "host": "127.0.0.1",
                                     "dashboard_address": None}


# ------------------------------------------------------------------ a real 2-worker Dask cluster (slow)
@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """A local Dask cluster of two worker processes (1 thread each), loopback only; closed after the module."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close(timeout=30)


@pytest.fixture(scope="module")
def sweeps(prefect_local: Path, dask_address: str, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, tuple[dict[str, Any], ResultsStore]]:
    """The same 3-point tiny sweep run sequentially and on the Dask cluster, each in fresh roots."""
    from flows.sweep import cku_sweep

    tiny = {k: v for k, v in PRESETS["tiny"].items() if k != "mask"}
    out = {}
    for mode in ("sequential", "dask"):
        base = tmp_path_factory.mktemp(f"sweep-{mode}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CKU_ARTIFACT_ROOT", str(base / "artifacts"))
            mp.setenv("CKU_RESULTS_ROOT", str(base / "results"))
            scale_out = {"task_runner": mode, "address": dask_address if mode == "dask" else None}
            result = cku_sweep(**tiny, nlrs=NLRS, bands=[None], objectives=["hinge_ga"], scale_out=scale_out)
        out[mode] = (result, ResultsStore(base / "results"))
    return out


def point_metrics(results: ResultsStore, run_id: str) -> dict[tuple[Any, ...], float]:
    _, rows = results.query("SELECT metric, judge, attack, family, subset, value FROM metrics WHERE run_id = ?", [run_id])
    return {tuple(r[:5]): r[5] for r in rows if r[0] not in TIMING_METRICS}


def row_counts(results: ResultsStore, run_id: str) -> dict[str, int]:
    return {t: results.query(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id])[1][0][0] for t in TABLES}


@pytest.mark.slow
def test_dask_sweep_gives_the_sequential_results(sweeps: dict[str, tuple[dict[str, Any], ResultsStore]]) -> None:
    (seq, seq_results), (par, par_results) = sweeps["sequential"], sweeps["dask"]
    assert [p["nlr"] for p in par["points"]] == [p["nlr"] for p in seq["points"]] == NLRS
    for s, p in zip(seq["points"], par["points"]):
        expected = point_metrics(seq_results, s["run_id"])
        assert expected and point_metrics(par_results, p["run_id"]) == expected, p["nlr"]
    # Fanned out, the shared stages ran once in the sweep before the points: every point hit them.
    for p in par["points"]:
        assert all(p["cached"][s] for s in ("model", "data", "reference", "examples", "scores"))
        assert not p["cached"]["mask"] and not p["cached"]["checkpoint"]
    _, rows = par_results.query("SELECT count(*) FROM stages WHERE stage = 'scores' AND NOT cached")
    assert rows == [(0,)]  # no point computed scores: no race on the shared prefix


@pytest.mark.slow
def test_points_from_every_worker_land_in_the_results_store(
        sweeps: dict[str, tuple[dict[str, Any], ResultsStore]]) -> None:
    (seq, seq_results), (par, par_results) = sweeps["sequential"], sweeps["dask"]
    workers = {p["worker"] for p in par["points"]}
    assert len(workers) == 2 and f"{socket.gethostname()}:{os.getpid()}" not in workers  # two worker processes
    _, rows = par_results.query("SELECT run_id, status, parent_run_id FROM runs WHERE flow = 'cku-pipeline'")
    assert sorted(rows) == sorted((p["run_id"], "completed", par["run_id"]) for p in par["points"])
    for s, p in zip(seq["points"], par["points"]):  # zero rows lost, whichever process wrote them
        counts = row_counts(par_results, p["run_id"])
        assert counts == row_counts(seq_results, s["run_id"]) and all(counts.values()), (p["worker"], counts)
