"""`cku-sweep` shares cached stages across its grid (neurons scored once), and `compare-baselines`
(the main job of `cku run`) publishes the methods side by side."""

from __future__ import annotations


import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore
from flows.presets import PRESETS

pytestmark = pytest.mark.usefixtures("prefect_local")


def test_nlr_sweep_scores_neurons_once(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from flows.sweep import cku_sweep

    store, results = env
    tiny = {k: v for k, v in PRESETS["tiny"].items() if k != "mask"}
    out = cku_sweep(**tiny, nlrs=[0.0, 0.5, 0.8], bands=[None], objectives=["hinge_ga"])
    assert len(out["points"]) == 3
    assert len(store.keys("scores")) == 1                       # one scoring pass for the whole grid
    assert len(store.keys("mask")) == 3 and len(store.keys("checkpoint")) == 3
    assert [p["cached"]["scores"] for p in out["points"]] == [False, True, True]
    _, rows = results.query("SELECT count(DISTINCT run_id) FROM runs WHERE parent_run_id = ?", [out["run_id"]])
    assert rows == [(3,)]
    # The parent trains nothing, but carries the provenance its points share.
    _, rows = results.query("SELECT DISTINCT model_digest, data_digest FROM runs WHERE run_id = ? OR parent_run_id = ?",
                            [out["run_id"], out["run_id"]])
    assert len(rows) == 1 and all(rows[0])


def test_compare_baselines_publishes_a_table(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.baselines import MAIN_METHODS, compare_baselines

    out = compare_baselines(**PRESETS["tiny"], methods=MAIN_METHODS)
    table = out["table"]
    assert [r["method"] for r in table] == MAIN_METHODS
    for row in table:
        assert row["asr"] is not None and 0.0 <= row["asr"] <= 1.0
        assert row["perplexity"] is not None and row["harmful_nll"] is not None
        assert any(k.startswith("asr_") for k in row)
    assert table[0]["agreement"] == 1.0       # the original model agrees with itself
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cku-comparison", "cku-report"])))
    assert {a.type for a in arts} == {"table", "markdown"}
    report = next(a for a in arts if a.type == "markdown")
    assert "data:image/png;base64," in report.data and "| method |" in report.data


def test_paper_design_runs_the_two_analyses(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from flows.sweep import cku_sweep, grid

    points = grid([0.0, 0.8], [[1], [2], [3]], ["hinge_ga"], "paper")
    assert points == [(0.0, [1], "hinge_ga"), (0.8, [1], "hinge_ga"), (0.8, [2], "hinge_ga"), (0.8, [3], "hinge_ga")]
    tiny = {k: v for k, v in PRESETS["tiny"].items() if k != "mask"}
    tiny["scoring"] = {**tiny["scoring"], "layers": [1, 2]}
    out = cku_sweep(**tiny, nlrs=[0.5, 0.8], bands=[[1], [2]], objectives=["hinge_ga"], design="paper")
    assert [r["method"] for r in out["table"]] == ["nlr=0.5 layers=1-1 hinge_ga", "nlr=0.8 layers=1-1 hinge_ga",
                                                    "nlr=0.8 layers=2-2 hinge_ga"]
    store, _ = env
    assert list((store.root / "reports").glob(f"{out['run_id']}-asr_vs_utility.png"))
