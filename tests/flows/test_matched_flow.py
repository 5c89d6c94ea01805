"""`cku matched` end to end on the tiny model: 2 methods x 2 learning rates x 2 seeds (+ the original
model), the shared prefix computed once, every stage cached on a rerun, the plot written, the rows
queryable, and `cku report --matched` rendering the report file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cku_core.config import MaskConfig
from cku_core.errors import ConfigError
from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore
from flows.presets import PRESETS

pytestmark = pytest.mark.usefixtures("prefect_local")


def matched_run_id(results: ResultsStore) -> str:
    _, rows = results.query("SELECT run_id FROM runs WHERE flow = 'cku-matched' ORDER BY started_at DESC LIMIT 1")
    return rows[0][0]


def test_cli_matched_runs_the_grid_once(env: tuple[ArtifactStore, ResultsStore], capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    store, results = env
    assert main(["matched", "--preset", "tiny-matched"]) == 0
    assert "completed; `cku report" in capsys.readouterr().out
    run_id = matched_run_id(results)
    for stage in ("model", "data", "reference", "examples", "scores", "mask"):
        assert len(store.keys(stage)) == 1, stage           # the shared prefix, computed once
    assert len(store.keys("checkpoint")) == 8               # 2 methods x 2 lrs x 2 seeds
    assert len(store.keys("evaluation")) == 9               # + the original model
    _, rows = results.query(
        "SELECT r.method, count(*) FROM runs r JOIN metrics m USING (run_id) WHERE r.parent_run_id = ?"
        " AND m.metric = 'knowledge_nll' AND r.status = 'completed' GROUP BY r.method ORDER BY r.method", [run_id])
    assert rows == [("cku", 4), ("ga", 4), ("original", 1)]
    _, rows = results.query("SELECT DISTINCT r.config->>'$.unlearn.lr' FROM runs r WHERE r.parent_run_id = ?"
                            " AND r.method = 'ga' ORDER BY 1", [run_id])
    assert [float(r[0]) for r in rows] == [1e-4, 1e-3]
    assert (store.root / "reports" / f"{run_id}-matched.png").exists()


def test_rerun_reuses_every_stage_and_publishes(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.matched import cku_matched

    out = cku_matched(**PRESETS["tiny-matched"])
    assert len(out["runs"]) == 9 and {r["status"] for r in out["runs"]} == {"completed"}
    for run in out["runs"]:
        assert run["cached"] and all(run["cached"].values()), run
    assert Path(out["plot"]).exists()
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cku-matched-report"])))
    report = arts[-1].data
    assert "data:image/png;base64," in report and "## Verdicts" in report and "cku" in report


def test_report_matched_writes_markdown_and_plot(env: tuple[ArtifactStore, ResultsStore], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    run_id = matched_run_id(env[1])
    out = tmp_path / "docs" / "results-matched.md"
    assert main(["report", "--matched", run_id[:8], "--out", str(out)]) == 0
    text = out.read_text()
    assert (tmp_path / "docs" / "results-matched-curves.png").exists()
    assert "![forgetting vs utility](results-matched-curves.png)" in text
    assert "training seeds (unlearn.seed) | 42, 43" in text and "tiny:llama" in text
    assert "8 completed of 8 unlearning runs" in text
    assert re.search(r"\| model digest \(original weights\) \| \S+ \|", text)   # provenance of the anchor
    assert re.search(r"\| data digest \| \S+ \|", text)
    capsys.readouterr()
    _, rows = env[1].query("SELECT run_id FROM runs WHERE parent_run_id = ? LIMIT 1", [run_id])
    assert main(["report", "--matched", rows[0][0]]) == 2   # a pipeline run is not a matched run
    assert "not a matched-forgetting run" in capsys.readouterr().err


def test_grid_points_of_each_axis() -> None:
    from flows.matched import grid_points

    lrs = {"cku": [1e-3, 1e-4], "ga": [1e-5], "default": [1.0]}
    points = grid_points("method", ["original", "cku", "ga"], [], [None], None, MaskConfig(), lrs)
    assert [(p.label, p.lrs) for p in points] == [("cku", [1e-4, 1e-3]), ("ga", [1e-5])]
    points = grid_points("nlr", [], [0.0, 0.8], [[8, 9]], None, MaskConfig(), {"nlr=0": [2.0], "default": [1.0]})
    assert [(p.label, p.mask.nlr, p.band, p.lrs) for p in points] == [("nlr=0", 0.0, [8, 9], [2.0]),
                                                                       ("nlr=0.8", 0.8, [8, 9], [1.0])]
    points = grid_points("band", [], [], [[1, 2], [4]], None, MaskConfig(nlr=0.5), {"default": [1.0]})
    assert [(p.label, p.mask.nlr) for p in points] == [("layers=1-2", 0.5), ("layers=4-4", 0.5)]
    with pytest.raises(ConfigError, match="no learning-rate grid for 'ga'"):
        grid_points("method", ["cku", "ga"], [], [None], None, MaskConfig(), {"cku": [1e-3]})
    with pytest.raises(ConfigError, match="at least two points"):
        grid_points("method", ["original", "cku"], [], [None], None, MaskConfig(), lrs)


def test_a_failed_point_is_reported_not_fatal(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from flows.matched import cku_matched

    # lr 1e-30 moves no weight, so the unlearning stage's "something changed" check fails that run
    params = {**PRESETS["tiny-matched"], "lrs": {"cku": [3e-3], "ga": [1e-30]}}
    out = cku_matched(**params)
    assert [(r["label"], r["status"]) for r in out["runs"]] == [
        ("original", "completed"), ("cku", "completed"), ("ga", "failed"), ("cku", "completed"), ("ga", "failed")]
    assert out["supported"] == [] and {r["label"] for r in out["table"]} == {"cku"}  # nothing left to compare
    _, rows = env[1].query("SELECT status, count(*) FROM runs WHERE parent_run_id = ? GROUP BY status ORDER BY status",
                           [out["run_id"]])
    assert rows == [("completed", 3), ("failed", 2)]
