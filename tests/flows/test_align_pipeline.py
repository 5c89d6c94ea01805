"""The align stage on the tiny model: a cached stage whose artifact is a loadable safetensors model
with provenance, keyed by the align splits only, and a pipeline that starts from the aligned model."""

from __future__ import annotations

from typing import Any

import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore
from flows.presets import PRESETS

pytestmark = pytest.mark.usefixtures("prefect_local")

TINY_DATA = {**PRESETS["tiny"]["data"], "n_align_harmful": 4, "n_align_benign": 3}
TINY_ALIGN = {"enabled": True, "steps": 2, "batch_size": 4, "max_length": 64, "max_new_tokens": 8, "lr": 1e-3}


def _inputs(**data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from cku_core.eval.splits import SplitConfig
    from tasks.data import prepare_data
    from tasks.model import prepare_model
    from tasks.params import ModelConfig

    return prepare_model(ModelConfig(spec="tiny:llama")), prepare_data(SplitConfig(**{**TINY_DATA, **data}))


def test_align_stage_is_cached_and_writes_a_loadable_model(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from cku_core.align import AlignConfig
    from cku_core.version import CODE_VERSION
    from tasks.align import align_stage
    from tasks.model import load_model_artifact

    store, _ = env
    raw, data = _inputs()
    first = align_stage(raw, data, AlignConfig(**TINY_ALIGN), return_state=True)
    out = first.result()
    assert first.name != "Cached" and out["stage"] == "align"
    model, _tok, info = load_model_artifact(out["ref"])   # checks the weight fingerprint too
    assert info["fingerprint"] != raw["info"]["fingerprint"] == info["base_fingerprint"]
    folder = store.root / "align" / out["key"]
    assert (folder / "hf" / "model.safetensors").is_file() and not list(folder.rglob("*.bin"))
    manifest = store.get("align", out["key"]).manifest
    assert manifest.provenance.model_digest == raw["info"]["fingerprint"]
    assert manifest.provenance.data_digest == data["info"]["align_digest"]
    assert manifest.provenance.config_digest == AlignConfig(**TINY_ALIGN).digest()
    assert manifest.provenance.code_version == CODE_VERSION
    assert info["align"]["steps"] == 2 and info["align"]["n_refusal_examples"] == 4

    again = align_stage(raw, data, AlignConfig(**TINY_ALIGN), return_state=True)
    assert again.name == "Cached" and again.result()["key"] == out["key"]
    # Another eval_benign size leaves the align splits as they are: the aligned model is reused.
    _, other_data = _inputs(n_eval_benign=2)
    assert other_data["info"]["data_digest"] != data["info"]["data_digest"]
    assert align_stage(raw, other_data, AlignConfig(**TINY_ALIGN)).get("key") == out["key"]
    # A different recipe is a different model.
    changed = align_stage(raw, data, AlignConfig(**{**TINY_ALIGN, "lr": 2e-3}))
    assert changed["key"] != out["key"] and changed["info"]["fingerprint"] != info["fingerprint"]


def test_pipeline_starts_every_stage_from_the_aligned_model(env: tuple[ArtifactStore, ResultsStore]) -> None:
    import json

    from flows.pipeline import cku_pipeline

    store, results = env
    out = cku_pipeline(**{**PRESETS["tiny"], "data": TINY_DATA, "align": TINY_ALIGN})
    assert set(out["cached"]) == {"model", "data", "align", "reference", "examples", "scores", "mask",
                                  "checkpoint", "evaluation"}
    _, rows = results.query("SELECT stage, key FROM stages WHERE run_id = ?", [out["run_id"]])
    keys = dict(rows)
    aligned = store.get("align", keys["align"])
    aligned_fp = json.loads((aligned.path / "info.json").read_text())["fingerprint"]
    # Unlearning starts from the aligned model, and the reference describes it ...
    base = json.loads((store.get("checkpoint", keys["checkpoint"]).path / "info.json").read_text())["base"]
    assert (base["stage"], base["key"]) == ("align", keys["align"])
    assert store.get("reference", keys["reference"]).manifest.provenance.model_digest == aligned_fp
    # ... while the forget responses are the raw model's answers (the knowledge alignment hides).
    raw_fp = aligned.manifest.provenance.model_digest
    assert store.get("examples", keys["examples"]).manifest.provenance.model_digest == raw_fp != aligned_fp
    # So are the knowledge judges' references: an aligned model's own answers would be refusals.
    from tasks.evaluate import load_reference

    reference = load_reference(store.get("reference", keys["reference"]).ref())
    assert reference.meta["knowledge_source"] == "model before alignment"
    _, rows = results.query("SELECT model_digest FROM runs WHERE run_id = ?", [out["run_id"]])
    assert rows == [(aligned_fp,)]
    _, rows = results.query("SELECT count(*) FROM metrics WHERE run_id = ? AND metric = 'asr'", [out["run_id"]])
    assert rows[0][0] > 0
    again = cku_pipeline(**{**PRESETS["tiny"], "data": TINY_DATA, "align": TINY_ALIGN})
    assert all(again["cached"].values()), again["cached"]


def test_align_without_an_align_split_fails_before_any_work(env: tuple[ArtifactStore, ResultsStore]) -> None:
    from cku_core.errors import ConfigError
    from flows.pipeline import cku_pipeline

    with pytest.raises(ConfigError, match="n_align_harmful"):
        cku_pipeline(**{**PRESETS["tiny"], "align": {"enabled": True}})


def _base_of_checkpoints(store: ArtifactStore, results: ResultsStore, run_ids: list[str]) -> set[tuple[str, str]]:
    import json

    _, rows = results.query(f"SELECT key FROM stages WHERE stage = 'checkpoint' AND run_id IN "
                            f"({', '.join('?' * len(run_ids))})", run_ids)
    return {(b["stage"], b["key"]) for (key,) in rows
            for b in [json.loads((store.get("checkpoint", key).path / "info.json").read_text())["base"]]}


def test_sweep_and_relearn_start_from_the_aligned_model(env: tuple[ArtifactStore, ResultsStore]) -> None:
    import json

    from flows.relearn import cku_relearn
    from flows.sweep import cku_sweep

    store, results = env
    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("model", "scoring", "unlearn", "evaluation")}
    sweep = cku_sweep(**tiny, data=TINY_DATA, align=TINY_ALIGN, nlrs=[0.5, 0.8], objectives=["hinge_ga"])
    point_runs = [p["run_id"] for p in sweep["points"]]
    _, rows = results.query(f"SELECT DISTINCT key FROM stages WHERE stage = 'align' AND run_id IN "
                            f"({', '.join('?' * len(point_runs))})", point_runs)
    (align_key,) = [r[0] for r in rows]
    assert _base_of_checkpoints(store, results, point_runs) == {("align", align_key)}
    n_aligned = len(store.keys("align"))
    relearn = cku_relearn(**tiny, data=TINY_DATA, align=TINY_ALIGN, methods=["original", "cku"],
                          relearn={"steps": [1], "lr": 1e-3, "batch_size": 2, "n_examples": 2, "max_length": 64,
                                   "attacks": ["direct"], "n_attack_prompts": 2, "max_new_tokens": 4})
    assert len(store.keys("align")) == n_aligned  # the same aligned model, from cache
    _, rows = results.query("SELECT DISTINCT model_digest FROM metrics WHERE run_id = ? AND method = 'original' "
                            "AND metric = 'relearn_train_loss'", [relearn["run_id"]])
    aligned = store.get("align", align_key)
    aligned_fp = json.loads((aligned.path / "info.json").read_text())["fingerprint"]
    # relearning "original" fine-tunes the aligned model, not the raw one
    assert rows == [(aligned_fp,)] and aligned_fp != aligned.manifest.provenance.model_digest
