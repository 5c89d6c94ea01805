"""Stages `data` (disjoint, digested splits) and `examples` (prompt/response pairs for every split).

`data` is cheap (files inside installed wheels), so it always runs; its artifact is keyed by the
split digest, which covers the config, every source's digest and the ids in each split.
`examples` completes the splits with reference responses: a record with none gets the original
model's greedy answer (reconstruction: forget on what *this* model actually says, and measure
knowledge as the NLL of its own held-out harmful answers). It is cached by model fingerprint, split
digest and decoding settings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from cku_core.data import Example, examples_digest, render_prompt
from cku_core.eval.splits import SplitConfig, assert_disjoint, make_splits
from cku_core.fingerprint import json_digest
from cku_core.generation import GenSettings, generate
from cku_core.store import ArtifactRef, ArtifactStore, Provenance
from tasks._progress import StageProgress
from tasks._stage import CACHED_TASK_OPTIONS, GPU_TAG, Timer, cache_key_fn, output, stage_key
from tasks.model import load_model_artifact

DATA_STAGE, DATA_VERSION = "data", "1"
EXAMPLES_STAGE, EXAMPLES_VERSION = "examples", "1"
SPLITS_FILE = "splits.json"
EXAMPLES_FILE = "examples.json"


@task(name="prepare-data", cache_policy=NO_CACHE)
def prepare_data(config: SplitConfig) -> dict[str, Any]:
    """Load the configured data sets and split them into forget / eval_harmful / scoring / eval_benign
    (+ align_harmful / align_benign for the align stage)."""
    config = SplitConfig.model_validate(config)
    with Timer() as t:
        splits = make_splits(config)
        assert_disjoint(splits)
        payload = {"digest": splits.digest, "config": config.model_dump(mode="json"), "sources": splits.sources,
                   "splits": {name: [r.as_dict() for r in records] for name, records in splits.names().items()}}
        if splits.align_harmful or splits.align_benign:  # read by the align stage only, not by `examples`
            payload["align"] = {name: [r.as_dict() for r in records] for name, records in splits.align_names().items()}

        def write(folder: Path) -> None:
            (folder / SPLITS_FILE).write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")

        artifact, reused = ArtifactStore().get_or_put(
            DATA_STAGE, splits.digest, write, stage_version=DATA_VERSION,
            provenance=Provenance(data_digest=splits.digest, config_digest=json_digest(payload["config"])))
    sizes = {name: len(records) for name, records in splits.all_names().items()}
    return output(DATA_STAGE, artifact.ref(), t.seconds, {"data_digest": splits.digest, "sizes": sizes,
                                                          "align_digest": splits.align_digest(),
                                                          "sources": [s.get("name") for s in splits.sources]}, version=DATA_VERSION, reused=reused)


def load_splits(ref: ArtifactRef | Mapping[str, Any]) -> dict[str, Any]:
    return json.loads((ArtifactStore().open_ref(ref).path / SPLITS_FILE).read_text(encoding="utf-8"))


@task(name="reference-responses", tags=[GPU_TAG],
      cache_key_fn=cache_key_fn(EXAMPLES_STAGE, EXAMPLES_VERSION), **CACHED_TASK_OPTIONS)
def prepare_examples(model: dict[str, Any], data: dict[str, Any], settings: GenSettings, batch_size: int,
                     device: str = "auto") -> dict[str, Any]:
    """Prompt/response pairs for every split; missing responses = the original model's greedy answer."""
    settings = GenSettings.model_validate(settings)
    key = stage_key(EXAMPLES_STAGE, EXAMPLES_VERSION,
                    {"model": model, "data": data, "settings": settings, "batch_size": batch_size})

    def write(folder: Path) -> None:
        splits = load_splits(data["ref"])["splits"]
        lm, tok, _info = load_model_artifact(model["ref"], device=device)
        missing = [(name, i) for name, recs in splits.items() for i, r in enumerate(recs) if not r.get("response")]
        prompts = [render_prompt(tok, splits[name][i]["prompt"]) for name, i in missing]
        with StageProgress("reference responses", len(prompts), unit="prompt") as bar:
            result = generate(lm, tok, prompts, settings, batch_size=batch_size, on_progress=bar)
        for (name, i), gen in zip(missing, result.outputs):
            splits[name][i]["response"] = gen.text.strip() or "(empty)"
            splits[name][i]["response_source"] = "original_model"
        (folder / EXAMPLES_FILE).write_text(json.dumps(splits, indent=1, ensure_ascii=False), encoding="utf-8")

    with Timer() as t:
        artifact, reused = ArtifactStore().get_or_put(
            EXAMPLES_STAGE, key, write, stage_version=EXAMPLES_VERSION,
            provenance=Provenance(model_digest=model["info"]["fingerprint"], data_digest=data["info"]["data_digest"]))
    splits = load_examples(artifact.ref())
    digests = {name: examples_digest(exs) for name, exs in splits.items()}
    return output(EXAMPLES_STAGE, artifact.ref(), t.seconds, {"digests": digests}, version=EXAMPLES_VERSION, reused=reused)


def load_examples(ref: ArtifactRef | Mapping[str, Any]) -> dict[str, list[Example]]:
    """split name -> Examples (prompt, response) of an `examples` artifact."""
    raw = load_example_records(ref)
    return {name: [Example(r["prompt"], r["response"]) for r in recs] for name, recs in raw.items()}


def load_example_records(ref: ArtifactRef | Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return json.loads((ArtifactStore().open_ref(ref).path / EXAMPLES_FILE).read_text(encoding="utf-8"))
