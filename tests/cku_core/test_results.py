"""Results store: Parquet parts + DuckDB views, concurrent writers, read-only queries, reports."""

from __future__ import annotations

import multiprocessing as mp
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cku_core.errors import CKUError
from cku_core.results import TABLES, ResultsError, ResultsStore, check_read_only, render_report

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def record_run(results: ResultsStore, run_id: str = "run-1", name: str = "calm-otter") -> None:
    base = dict(flow="cku-pipeline", name=name, method="cku", config={"mask": {"nlr": 0.8}},
                model_digest="m" * 64, data_digest="d" * 64, config_digest="c" * 64,
                package_versions={"torch": "2.13.0"}, started_at=T0)
    results.write_rows("runs", run_id, "start", [dict(base, status="running")])
    results.write_rows("runs", run_id, "finish", [dict(base, status="completed", finished_at=T0 + timedelta(seconds=90),
                                                       timings={"unlearn": 60.0})])
    results.write_rows("stages", run_id, "mask", [dict(stage="mask", stage_version="1", key="k" * 64, cached=True,
                                                      seconds=0.1, artifact_path="/a/mask/k")])
    results.write_rows("metrics", run_id, "judge", [
        dict(method=m, metric=metric, value=v, judge="keyword", attack="direct", n=50)
        for m, asr, acc in (("original", 0.9, 0.50), ("ga", 0.2, 0.35), ("cku", 0.1, 0.49))
        for metric, v in (("asr", asr), ("mc_acc", acc))
    ])
    results.write_rows("mask_stats", run_id, "mask", [
        dict(layer=layer, d_ff=64, n_locked=52, nlr=0.8, scorer="grad_x_act", score_mean=0.1, threshold=0.05)
        for layer in (1, 2)
    ])


def test_empty_store_has_typed_views(results: ResultsStore) -> None:
    for table in TABLES:
        columns, rows = results.query(f"SELECT * FROM {table}")
        assert rows == [] and columns[0] == "run_id" and "recorded_at" in columns
    assert results.list_runs() == []


def test_parts_layout_and_atomic_names(results: ResultsStore) -> None:
    part = results.write_rows("metrics", "r1", "judge", [dict(method="cku", metric="asr", value=0.5)])
    assert part is not None
    assert part.parent == results.root / "metrics" / "run_id=r1"
    assert part.name.startswith("part-judge-") and part.suffix == ".parquet"
    assert [p.name for p in part.parent.iterdir()] == [part.name]  # no temp file left
    # run_id lives in the folder only; all schema columns are present in every part
    names = pq.read_schema(part).names
    assert "run_id" not in names and "judge" in names and "code_version" in names
    assert results.write_rows("metrics", "r1", "judge", []) is None


def test_runs_view_shows_latest_status(results: ResultsStore) -> None:
    record_run(results)
    runs = results.list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "completed" and runs[0]["name"] == "calm-otter"
    _, rows = results.query("SELECT count(*) FROM runs_history")
    assert rows == [(2,)]


def test_json_columns_are_queryable(results: ResultsStore) -> None:
    record_run(results)
    _, rows = results.query("SELECT config->>'$.mask.nlr', package_versions->>'$.torch' FROM runs")
    assert rows == [("0.8", "2.13.0")]


def test_code_version_and_recorded_at_filled_in(results: ResultsStore) -> None:
    record_run(results)
    _, rows = results.query("SELECT DISTINCT code_version IS NOT NULL, recorded_at IS NOT NULL FROM metrics")
    assert rows == [(True, True)]


def test_bad_rows_are_one_line_errors(results: ResultsStore) -> None:
    with pytest.raises(ResultsError, match="unknown column"):
        results.write_rows("metrics", "r", "s", [dict(metrc="asr")])
    with pytest.raises(ResultsError, match="expects float"):
        results.write_rows("metrics", "r", "s", [dict(metric="asr", value="high")])
    with pytest.raises(ResultsError, match="unknown results table"):
        results.write_rows("nope", "r", "s", [dict(a=1)])
    with pytest.raises(ResultsError, match="invalid run id"):
        results.write_rows("metrics", "../x", "s", [dict(metric="asr")])
    with pytest.raises(ResultsError, match="names run"):
        results.write_rows("metrics", "r", "s", [dict(run_id="other", metric="asr")])
    assert not (results.root / "metrics").exists() or not any((results.root / "metrics").rglob("*.parquet"))


@pytest.mark.parametrize("sql", [
    "INSERT INTO metrics VALUES (1)", "DELETE FROM runs", "UPDATE runs SET status = 'x'", "DROP VIEW runs",
    "CREATE TABLE t AS SELECT 1", "COPY (SELECT 1) TO '/tmp/cku-leak.csv'", "EXPORT DATABASE '/tmp/cku-leak'",
    "ATTACH '/tmp/cku-leak.duckdb' AS x", "INSTALL httpfs", "LOAD json", "SET threads = 1", "PRAGMA version",
    "CALL pragma_version()", "SELECT 1; DROP VIEW runs", "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/cku-leak.csv'", "CHECKPOINT",
])
def test_query_refuses_writes(results: ResultsStore, sql: str) -> None:
    with pytest.raises(ResultsError) as info:
        results.query(sql)
    assert isinstance(info.value, CKUError) and "\n" not in str(info.value)
    assert not Path("/tmp/cku-leak.csv").exists()


@pytest.mark.parametrize("sql", [
    "SELECT 1", "with a as (select 2) select * from a", "DESCRIBE metrics", "SHOW TABLES", "SUMMARIZE metrics",
    "EXPLAIN SELECT * FROM runs", "FROM metrics", "VALUES (1)",
])
def test_query_accepts_reads(results: ResultsStore, sql: str) -> None:
    check_read_only(sql)
    results.query(sql)


def test_query_cannot_read_outside_results_root(results: ResultsStore) -> None:
    with pytest.raises(ResultsError, match="disabled by configuration|Permission"):
        results.query("SELECT * FROM read_csv('/etc/passwd')")


def test_query_errors_are_one_line(results: ResultsStore) -> None:
    with pytest.raises(ResultsError, match="Catalog Error") as info:
        results.query("SELECT * FROM nope")
    assert "\n" not in str(info.value)
    with pytest.raises(ResultsError, match="cannot parse"):
        results.query("SELEC 1")


def _writer(root: str, worker: int, parts: int, rows_per_part: int) -> None:
    results = ResultsStore(root)
    for p in range(parts):
        results.write_rows("metrics", f"run-{worker}", f"stage{p}", [
            dict(method="cku", metric="asr", value=float(i), n=worker) for i in range(rows_per_part)
        ])
        results.write_rows("runs", f"run-{worker}", f"stage{p}", [dict(name=f"w{worker}", status="running")])
        # a reader in the middle of the writers must never fail (no lock errors, no half files)
        results.query("SELECT count(*) FROM metrics")


def test_four_concurrent_processes_lose_no_rows(results: ResultsStore) -> None:
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(results.root), w, 15, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    _, rows = results.query("SELECT run_id, count(*) FROM metrics GROUP BY run_id ORDER BY run_id")
    assert rows == [(f"run-{w}", 15 * 40) for w in range(4)]
    _, rows = results.query("SELECT count(*) FROM runs_history")
    assert rows == [(60,)]
    assert len(results.list_runs()) == 4


def test_resolve_run_by_prefix_and_name(results: ResultsStore) -> None:
    record_run(results, "abc123", "calm-otter")
    record_run(results, "abd456", "brave-fox")
    assert results.resolve_run("abc") == "abc123"
    assert results.resolve_run("brave-fox") == "abd456"
    with pytest.raises(ResultsError, match="matches 2 runs"):
        results.resolve_run("ab")
    with pytest.raises(ResultsError, match="no run 'zzz'.*cku runs"):
        results.resolve_run("zzz")


def test_render_report_with_plot(results: ResultsStore, tmp_path: Path) -> None:
    record_run(results)
    plot = tmp_path / "report-asr-utility.png"
    md = render_report("run-1", store=results, plot_path=plot)
    assert md.startswith("# Run calm-otter")
    for needle in ("## Provenance", "m" * 64, "## Config", '"nlr": 0.8', "## Metrics", "| cku | asr | keyword",
                   "## Stages", "## Mask", "![ASR vs utility](report-asr-utility.png)", "package torch"):
        assert needle in md, needle
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_report_without_metrics(results: ResultsStore) -> None:
    results.write_rows("runs", "r0", "start", [dict(name="empty", status="running")])
    md = render_report("r0", store=results, plot_path=None)
    assert "_no metrics recorded_" in md


def test_every_column_is_documented() -> None:
    for table, columns in TABLES.items():
        for column in columns:
            assert column.doc, f"{table}.{column.name}"
