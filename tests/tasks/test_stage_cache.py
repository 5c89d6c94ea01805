"""Stage cache keys: content-addressed, path-independent, and only reported while the artifact is intact."""

from __future__ import annotations

from pathlib import Path

from cku_core.config import MaskConfig
from cku_core.store import ArtifactStore
from tasks._stage import cache_key_fn, key_view, output, stage_key


def fake_output(store: ArtifactStore, stage: str = "mask", key: str = "k1", data: bytes = b"1") -> dict:
    art = store.put_files(stage, key, {"f": data}, stage_version="1")
    return output(stage, art.ref(), 1.5, {"fingerprint": "x"}, version="1")


def test_key_ignores_paths_timings_and_device(store: ArtifactStore, tmp_path: Path) -> None:
    a = fake_output(store)
    moved = {**a, "ref": {**a["ref"], "path": "/elsewhere"}, "computed_seconds": 99.0, "reused": True}
    params = {"model": a, "config": MaskConfig(nlr=0.8)}
    assert stage_key("mask", "1", params) == stage_key("mask", "1", {"model": moved, "config": {"nlr": 0.8}})
    assert stage_key("mask", "1", {**params, "device": "cpu"}) == stage_key("mask", "1", {**params, "device": "cuda:0"})
    assert key_view(a) == {"stage": "mask", "key": "k1", "content_digest": a["ref"]["content_digest"]}


def test_key_changes_with_content_config_and_version(store: ArtifactStore) -> None:
    a = fake_output(store, key="k1", data=b"1")
    b = fake_output(store, key="k2", data=b"2")
    base = stage_key("mask", "1", {"model": a, "config": MaskConfig(nlr=0.8)})
    assert base != stage_key("mask", "1", {"model": b, "config": MaskConfig(nlr=0.8)})
    assert base != stage_key("mask", "1", {"model": a, "config": MaskConfig(nlr=0.5)})
    assert base != stage_key("mask", "2", {"model": a, "config": MaskConfig(nlr=0.8)})
    assert base != stage_key("mask", "1", {"model": a, "config": MaskConfig(nlr=0.8)}, lambda p: {"file": "sha"})


class _FakeResultStore:
    """Stands in for Prefect's ResultStore: records are files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root, self.cache = root, {}

    def _resolved_key_path(self, key: str) -> str:
        return str(self.root / key)


def test_cache_key_fn_drops_prefect_records_whose_artifact_is_gone(store: ArtifactStore, tmp_path: Path) -> None:
    from types import SimpleNamespace

    params = {"config": MaskConfig(nlr=0.8)}
    key = stage_key("mask", "1", params)
    prefect_key = f"cku-mask-v1-{key}"
    context = SimpleNamespace(result_store=_FakeResultStore(tmp_path))
    record = tmp_path / prefect_key
    fn = cache_key_fn("mask", "1")

    record.write_text("stale result of a run whose artifact was deleted")
    assert fn(context, params) == prefect_key
    assert not record.exists()            # nothing on disk: the stale record goes, the task computes

    art = store.put_files("mask", key, {"mask.safetensors": b"abc"}, stage_version="1")
    record.write_text("result")
    assert fn(context, params) == prefect_key and record.exists()   # intact: the hit is served

    (art.path / "mask.safetensors").write_bytes(b"tampered")
    assert fn(context, params) == prefect_key
    assert not record.exists()            # corrupt: quarantined and the record dropped, so it recomputes
    assert (store.quarantine_dir / "mask").is_dir()
