"""The real pipeline, in process, on the tiny preset: every stage runs, a rerun reuses every stage,
a corrupt artifact is quarantined and only its stage (and what depends on it) recomputes, and a
failed run is visible as failed in the results store."""

from __future__ import annotations


import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore
from flows.presets import PRESETS

pytestmark = pytest.mark.usefixtures("prefect_local")
STAGES = ["model", "data", "reference", "examples", "scores", "mask", "checkpoint", "evaluation"]


def run_tiny(**overrides: object) -> dict:
    from flows.pipeline import cku_pipeline

    return cku_pipeline(**{**PRESETS["tiny"], **overrides})


def test_first_run_computes_every_stage(env: tuple[ArtifactStore, ResultsStore]) -> None:
    store, results = env
    out = run_tiny()
    assert sorted(out["cached"]) == sorted(STAGES) and not any(out["cached"].values())
    for stage in STAGES:
        assert store.keys(stage), stage
    runs = results.list_runs()
    assert [r["status"] for r in runs] == ["completed"] and runs[0]["run_id"] == out["run_id"]
    _, rows = results.query("SELECT count(*) FROM metrics WHERE run_id = ? AND metric = 'asr'", [out["run_id"]])
    assert rows[0][0] > 0
    _, rows = results.query("SELECT count(*), count(DISTINCT attack) FROM generations WHERE run_id = ?", [out["run_id"]])
    assert rows[0][0] > 0 and rows[0][1] == 3
    _, rows = results.query("SELECT count(*) FROM mask_stats WHERE run_id = ?", [out["run_id"]])
    assert rows == [(2,)]  # layers 1 and 2 of the tiny preset
    _, rows = results.query("SELECT DISTINCT model_digest IS NOT NULL, config_digest IS NOT NULL FROM metrics")
    assert rows == [(True, True)]


def test_rerun_reuses_every_stage(env: tuple[ArtifactStore, ResultsStore]) -> None:
    _, results = env
    out = run_tiny()
    assert all(out["cached"].values()), out["cached"]
    # Every stage's Prefect state is Cached, except `data`: it re-reads its sources on purpose (cheap),
    # so an edited data file changes the split digest; its artifact is still reused.
    assert {s for s, hit in out["states"].items() if not hit} == {"data"}, out["states"]
    _, rows = results.query("SELECT bool_and(cached) FROM stages WHERE run_id = ?", [out["run_id"]])
    assert rows == [(True,)]
    _, rows = results.query("SELECT count(*) FROM runs")
    assert rows == [(2,)]                                  # one row per run, not per write


def test_corrupt_checkpoint_is_quarantined_and_recomputed(env: tuple[ArtifactStore, ResultsStore]) -> None:
    store, _ = env
    [key] = store.keys("checkpoint")
    weights = store.root / "checkpoint" / key / "delta.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])  # a truncated checkpoint must never be served
    out = run_tiny()
    assert out["cached"]["checkpoint"] is False
    assert out["cached"]["scores"] is True and out["cached"]["model"] is True
    assert len(list((store.quarantine_dir / "checkpoint").iterdir())) == 1
    assert store.get("checkpoint", key) is not None  # recomputed under the same key


def test_other_nlr_reuses_scores_but_not_mask(env: tuple[ArtifactStore, ResultsStore]) -> None:
    out = run_tiny(mask={"nlr": 0.5})
    assert out["cached"]["scores"] is True and out["cached"]["mask"] is False


def test_baseline_method_skips_scoring(env: tuple[ArtifactStore, ResultsStore]) -> None:
    out = run_tiny(method="ga")
    assert "scores" not in out["cached"] and "mask" not in out["cached"]
    assert out["cached"]["checkpoint"] is False


def test_failed_run_is_recorded_as_failed(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from flows.pipeline import cku_pipeline

    state = cku_pipeline(**PRESETS["tiny"], method="no-such-method", return_state=True)
    assert state.is_failed()
    _, rows = env[1].query("SELECT status FROM runs WHERE status = 'failed'")
    assert rows == [("failed",)]


def test_cli_run_with_preset_and_overrides(env: tuple[ArtifactStore, ResultsStore],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["run", "--preset", "tiny", "--set", "mask.nlr=0.5"]) == 0
    assert "completed; `cku report" in capsys.readouterr().out
    _, rows = env[1].query("SELECT config->>'$.mask.nlr' FROM runs ORDER BY started_at DESC LIMIT 1")
    assert rows == [("0.5",)]


def test_cli_run_with_invalid_parameter_is_one_line_error(env: tuple[ArtifactStore, ResultsStore],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["run", "--preset", "tiny", "--set", "mask.nlr=7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nlr" in err and len(err.strip().splitlines()) == 1, err


def test_cli_run_with_unknown_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["run", "--preset", "tiny", "--set", "mask_nlr=0.5"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown parameter(s) mask_nlr for flow compare-baselines")


def test_long_stages_publish_progress_artifacts(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    run_tiny(unlearn={"steps": 3, "batch_size": 2, "max_length": 64, "lr": 2e-3})  # a new checkpoint + evaluation
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))
    descriptions = {a.description for a in progress}
    assert {"unlearn progress", "evaluate progress"} <= descriptions, descriptions
    assert any(a.data == 100.0 for a in progress if a.description == "unlearn progress")
