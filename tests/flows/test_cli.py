"""The `cku` CLI: read-only queries, runs, reports, one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cku_core.results import ResultsStore
from flows.cli import build_parser, format_table, load_parameters, main, server_command

REPO = Path(__file__).resolve().parents[2]


def seed(results: ResultsStore) -> None:
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    results.write_rows("runs", "run-a1", "finish", [dict(flow="cku-pipeline", name="calm-otter", method="cku",
                                                         status="completed", started_at=t0, finished_at=t0,
                                                         config={"nlr": 0.8})])
    results.write_rows("metrics", "run-a1", "judge", [dict(method="cku", metric="asr", value=0.1, judge="keyword"),
                                                      dict(method="cku", metric="mc_acc", value=0.5)])


def cli(*args: str, env_root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CKU_RESULTS_ROOT=str(env_root), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def test_query_prints_table(results: ResultsStore, capsys: pytest.CaptureFixture[str]) -> None:
    seed(results)
    assert main(["--results-root", str(results.root), "query",
                 "SELECT metric, value FROM metrics ORDER BY metric"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["metric", "value"]
    assert "asr" in out and "0.1" in out and "(2 rows)" in out


def test_query_json_and_csv(results: ResultsStore, capsys: pytest.CaptureFixture[str]) -> None:
    seed(results)
    main(["--results-root", str(results.root), "query", "SELECT metric FROM metrics ORDER BY 1", "--format", "json"])
    assert json.loads(capsys.readouterr().out) == [{"metric": "asr"}, {"metric": "mc_acc"}]
    main(["--results-root", str(results.root), "query", "SELECT metric FROM metrics ORDER BY 1", "--format", "csv"])
    assert capsys.readouterr().out.splitlines() == ["metric", "asr", "mc_acc"]


def test_write_query_is_refused_without_traceback(results: ResultsStore) -> None:
    proc = cli("query", "DELETE FROM runs", env_root=results.root)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: only read-only queries") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_query_is_fast_and_does_not_import_prefect_or_torch(results: ResultsStore) -> None:
    code = ("import sys, flows.cli as c; c.main(['query', 'SELECT 1']); "
            "print('HEAVY', [m for m in ('prefect', 'torch', 'transformers') if m in sys.modules])")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env=dict(os.environ, CKU_RESULTS_ROOT=str(results.root)))
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert time.monotonic() - start < 10


def test_runs_lists_runs(results: ResultsStore, capsys: pytest.CaptureFixture[str]) -> None:
    seed(results)
    assert main(["--results-root", str(results.root), "runs"]) == 0
    out = capsys.readouterr().out
    assert "run-a1" in out and "calm-otter" in out and "completed" in out


def test_report_to_file_with_plot(results: ResultsStore, tmp_path: Path) -> None:
    seed(results)
    out = tmp_path / "rep" / "calm.md"
    assert main(["--results-root", str(results.root), "report", "calm-otter", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Run calm-otter") and "![ASR vs utility](calm-asr-utility.png)" in text
    assert (tmp_path / "rep" / "calm-asr-utility.png").exists()


def test_report_unknown_run_exit_2(results: ResultsStore) -> None:
    proc = cli("report", "nope", env_root=results.root)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no run 'nope'")


def test_missing_flow_is_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    def missing(module: str) -> None:
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setattr(importlib, "import_module", missing)
    assert main(["sweep"]) == 2
    assert "error: the flow flows.sweep:cku_sweep is not available" in capsys.readouterr().err


def test_parameters_from_file_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: tiny}\nmask: {nlr: 0.8}\n")
    params = load_parameters(cfg, ["mask.nlr=0.5", "unlearn.steps=3", "tags=[a, b]"])
    assert params == {"model": {"preset": "tiny"}, "mask": {"nlr": 0.5}, "unlearn": {"steps": 3}, "tags": ["a", "b"]}


def test_bad_config_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- just\n- a list\n")
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config") and "must be a mapping" in err and len(err.strip().splitlines()) == 1


def test_server_command_is_local_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_UI_API_URL", raising=False)
    cmd, env = server_command("127.0.0.1", 4300)
    assert cmd[1:] == ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4300"]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4300/api"  # the UI must call this server


def test_help_lists_subcommands() -> None:
    text = build_parser().format_help()
    for sub in ("query", "runs", "report", "server", "run", "sweep"):
        assert sub in text


def test_format_table_cuts_long_cells() -> None:
    text = format_table(["a"], [["x" * 100]], max_width=10)
    assert "x" * 9 + "…" in text and "(1 row)" in text
