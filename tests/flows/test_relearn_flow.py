"""`cku-relearn` in process on the tiny preset: a curve point per method, data kind and k lands in the
results store (with provenance), a rerun serves every relearn stage from cache, other k recompute.

(The tiny random model writes non-language, so it has no harmful reference answers and no knowledge
NLL; that relearning on forget data lowers the held-out harmful NLL is tested in
tests/cku_core/test_relearn.py on a model that has something to relearn.)"""

from __future__ import annotations

import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore
from flows.presets import PRESETS

pytestmark = pytest.mark.usefixtures("prefect_local")
RELEARN = {"steps": [2, 1], "lr": 1e-3, "batch_size": 2, "n_examples": 2, "max_length": 64,
           "attacks": ["direct"], "n_attack_prompts": 2, "max_new_tokens": 4}


def run(**overrides: object) -> dict:
    from flows.relearn import cku_relearn

    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("model", "data", "scoring", "unlearn", "evaluation")}
    params = {**tiny, "relearn": RELEARN, "methods": ["original", "cku"], "data_kinds": ["forget", "benign"]}
    return cku_relearn(**{**params, **overrides})


def test_curve_is_recorded_for_each_method_kind_and_k(env: tuple[ArtifactStore, ResultsStore]) -> None:
    store, results = env
    out = run()
    assert out["relearn_cached"] == [False] * 4 and len(store.keys("relearn")) == 4
    assert {(r["method"], r["data"], r["k"]) for r in out["table"]} == {
        (m, d, k) for m in ("original", "cku") for d in ("forget", "benign") for k in (0, 1, 2)}
    _, rows = results.query(
        "SELECT method, relearn_data, relearn_step, count(*) FROM metrics WHERE run_id = ? AND metric = 'asr' "
        "AND judge = 'refusal_keyword' AND attack = 'all' AND family = 'all' GROUP BY ALL ORDER BY ALL", [out["run_id"]])
    assert [r[:3] for r in rows] == sorted((m, d, k) for m in ("cku", "original") for d in ("benign", "forget")
                                           for k in (0, 1, 2))
    _, rows = results.query("SELECT count(*), count(DISTINCT model_digest), bool_and(code_version IS NOT NULL), "
                            "bool_and(config_digest IS NOT NULL), count(DISTINCT data_digest) FROM metrics "
                            "WHERE run_id = ? AND metric = 'relearn_train_loss'", [out["run_id"]])
    assert rows == [(8, 2, True, True, 2)]  # 2 methods x 2 kinds x k in (1, 2); one digest per model and data kind
    _, rows = results.query("SELECT count(*) FROM stages WHERE run_id = ? AND stage = 'relearn'", [out["run_id"]])
    assert rows == [(4,)]


def test_rerun_is_cached_and_other_steps_recompute(env: tuple[ArtifactStore, ResultsStore]) -> None:
    assert run()["relearn_cached"] == [True] * 4
    out = run(relearn={**RELEARN, "steps": [3]}, data_kinds=["forget"], methods=["cku"])
    assert out["relearn_cached"] == [False] and [p["k"] for p in out["curves"]["cku"]["forget"]] == [0, 3]


def test_cli_validates_relearn_parameters_before_running(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    assert main(["relearn", "--preset", "tiny", "--set", "relearn.steps=[0, 5]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid parameters") and "positive step counts" in err and err.count("\n") == 1
