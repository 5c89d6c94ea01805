"""ResultsStore on an object store (moto's S3 server): several writer processes at once lose no row,
DuckDB reads the parts in place through fsspec, and the read-only guard still holds there."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cku_core.results import ResultsError, ResultsStore

REPO = Path(__file__).resolve().parents[2]
WRITERS, RUNS_PER_WRITER, METRICS_PER_RUN = 4, 5, 12

WRITER = textwrap.dedent("""
    import sys
    from cku_core.results import ResultsStore

    writer = sys.argv[1]
    store = ResultsStore()
    for r in range({runs}):
        run_id = f"{{writer}}-run{{r}}"
        store.write_rows("runs", run_id, "start", [{{"flow": "cku-pipeline", "method": "cku", "status": "running"}}])
        store.write_rows("metrics", run_id, "evaluation",
                         [{{"method": "cku", "metric": f"m{{i}}", "value": float(i)}} for i in range({metrics})])
        store.write_rows("runs", run_id, "finish", [{{"status": "completed"}}])
""").format(runs=RUNS_PER_WRITER, metrics=METRICS_PER_RUN)


def test_concurrent_writer_processes_lose_no_row(s3, tmp_path: Path) -> None:  # noqa: ANN001
    url = s3.url("cku/results")
    env = {**os.environ, **s3.env, "CKU_RESULTS_ROOT": url, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, f"w{i}"], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(WRITERS)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode()[-2000:]

    store = ResultsStore(url)
    n_runs = WRITERS * RUNS_PER_WRITER
    assert store.query("SELECT count(*), count(DISTINCT run_id) FROM metrics")[1] == [(n_runs * METRICS_PER_RUN, n_runs)]
    assert store.query("SELECT count(*) FROM runs_history")[1] == [(2 * n_runs,)]
    _, rows = store.query("SELECT status, count(*) FROM runs GROUP BY status")
    assert rows == [("completed", n_runs)]                      # the latest row of every run
    assert [r["run_id"] for r in store.list_runs()] and store.resolve_run("w3-run4") == "w3-run4"

    # `cku query` reads the same parts from another process.
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "--results-root", url, "query", "--format", "csv",
                           "SELECT count(*) AS n FROM metrics"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["n", str(n_runs * METRICS_PER_RUN)]


def test_parts_are_objects_under_the_root(s3) -> None:  # noqa: ANN001
    store = ResultsStore(s3.url("res"))
    part = store.write_rows("stages", "run1", "record", [{"stage": "mask", "cached": True}])
    assert isinstance(part, str) and part.startswith(s3.url("res/stages/run_id=run1/part-record-"))
    assert s3.fs().exists(part)
    assert store.query("SELECT run_id, stage, cached FROM stages")[1] == [("run1", "mask", True)]
    assert store.write_rows("stages", "run1", "record", []) is None


def test_empty_remote_root_has_empty_views(s3) -> None:  # noqa: ANN001
    columns, rows = ResultsStore(s3.url("nothing-yet")).query("SELECT * FROM metrics")
    assert "value" in columns and rows == []


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO 's3://{bucket}/res/x.parquet'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('s3://{bucket}/elsewhere/secret.parquet')",
    "SELECT * FROM read_text('s3://{bucket}/elsewhere/secret.txt')",
])
def test_read_only_guard_holds_on_remote_roots(s3, sql: str) -> None:  # noqa: ANN001
    fs = s3.fs()
    fs.pipe_file(f"{s3.bucket}/elsewhere/secret.txt", b"secret")
    store = ResultsStore(s3.url("res"))
    store.write_rows("stages", "run1", "record", [{"stage": "mask"}])
    with pytest.raises(ResultsError):
        store.query(sql.format(bucket=s3.bucket))
    assert not fs.exists(f"{s3.bucket}/res/x.parquet")


def test_missing_bucket_is_one_line(s3) -> None:  # noqa: ANN001
    with pytest.raises(ResultsError) as err:
        ResultsStore("s3://no-such-bucket-cku/results").query("SELECT count(*) FROM runs")
    message = str(err.value)
    assert "\n" not in message and "no-such-bucket-cku" in message and "CKU_RESULTS_ROOT" in message
    with pytest.raises(ResultsError, match="does not exist"):
        ResultsStore("s3://no-such-bucket-cku/results").write_rows("runs", "r1", "start", [{"status": "running"}])
