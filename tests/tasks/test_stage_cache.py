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
    """Stands in for Prefect's ResultStore (its storage fields only): records are files under `root`."""

    def __init__(self, root: Path) -> None:
        from prefect.filesystems import LocalFileSystem

        self.result_storage, self.metadata_storage, self.cache = LocalFileSystem(basepath=str(root)), None, {}


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


class _ReadableResultStore(_FakeResultStore):
    """Also reads a record back, as Prefect's ResultStore.read does: the stage output it holds."""

    def __init__(self, root: Path, value: dict) -> None:
        super().__init__(root)
        self.value = value

    def read(self, key: str):  # noqa: ANN201 - mimics prefect.results.ResultStore.read
        from types import SimpleNamespace

        if not (Path(self.result_storage.basepath) / key).exists():
            raise ValueError("no record")
        return SimpleNamespace(result=self.value)


def test_cache_key_fn_drops_records_that_point_at_rewritten_content(store: ArtifactStore, tmp_path: Path) -> None:
    from types import SimpleNamespace

    params = {"config": MaskConfig(nlr=0.8)}
    key = stage_key("mask", "1", params)
    prefect_key = f"cku-mask-v1-{key}"
    old = output("mask", store.put_files("mask", key, {"f": b"old"}, stage_version="1").ref(), 1.0, version="1")
    fn = cache_key_fn("mask", "1")
    record = tmp_path / prefect_key

    record.write_text("result")
    assert fn(SimpleNamespace(result_store=_ReadableResultStore(tmp_path, old)), params) == prefect_key
    assert record.exists()                # the record matches the artifact: served

    store.discard("mask", key)
    store.put_files("mask", key, {"f": b"new"}, stage_version="1")   # recomputed elsewhere after a crash
    assert fn(SimpleNamespace(result_store=_ReadableResultStore(tmp_path, old)), params) == prefect_key
    assert not record.exists()            # it points at the old content: dropped, so the task re-runs


def test_cache_key_fn_drops_stale_records_in_remote_result_storage(s3, monkeypatch) -> None:  # noqa: ANN001
    """Object-store roots: the check is against the bucket's artifact, the record deleted from the bucket."""
    from types import SimpleNamespace

    from prefect.filesystems import RemoteFileSystem

    monkeypatch.setenv("CKU_ARTIFACT_ROOT", s3.url("art"))
    params = {"config": MaskConfig(nlr=0.8)}
    key = stage_key("mask", "1", params)
    prefect_key = f"cku-mask-v1-{key}"
    storage = RemoteFileSystem(basepath=s3.url("art/.prefect-results"),
                               settings={"endpoint_url": s3.endpoint, "use_listings_cache": False})
    context = SimpleNamespace(result_store=SimpleNamespace(result_storage=storage, metadata_storage=None, cache={}))
    record = f"{s3.bucket}/art/.prefect-results/{prefect_key}"
    fs, fn = s3.fs(), cache_key_fn("mask", "1")

    fs.pipe_file(record, b"stale")
    assert fn(context, params) == prefect_key and not fs.exists(record)   # no artifact in the bucket

    ArtifactStore().put_files("mask", key, {"mask.safetensors": b"abc"}, stage_version="1")
    fs.pipe_file(record, b"result")
    assert fn(context, params) == prefect_key and fs.exists(record)       # intact: the hit is served

    [obj] = [p for p in fs.find(f"{s3.bucket}/art/mask/{key}") if p.endswith("mask.safetensors")]
    fs.rm_file(obj)                                                       # an object lost in the bucket
    assert fn(context, params) == prefect_key and not fs.exists(record)


def test_align_cache_key_drops_a_record_from_another_artifact_root(store: ArtifactStore, tmp_path: Path) -> None:
    """Prefect's records live in the Prefect home, shared by every artifact root: a record written by a
    run under another root (same key, other bytes: CPU training is not bit-reproducible across thread
    counts) must not be served, or every stage after `align` fails on a digest mismatch."""
    from types import SimpleNamespace

    from cku_core.align import AlignConfig
    from tasks.align import STAGE, VERSION, _cache_key, align_key

    params = {"model": {"info": {"fingerprint": "raw"}}, "data": {"info": {"align_digest": "a"}},
              "config": AlignConfig(enabled=True)}
    key = align_key(params)
    prefect_key = f"cku-{STAGE}-v{VERSION}-{key}"
    elsewhere = ArtifactStore(tmp_path / "other-root").put_files(STAGE, key, {"f": b"other bytes"}, stage_version=VERSION)
    store.put_files(STAGE, key, {"f": b"these bytes"}, stage_version=VERSION)
    records = tmp_path / "records"
    records.mkdir()
    (records / prefect_key).write_text("result")
    context = SimpleNamespace(result_store=_ReadableResultStore(records, output(STAGE, elsewhere.ref(), 1.0, version=VERSION)))
    assert _cache_key(context, params) == prefect_key
    assert not (records / prefect_key).exists()   # dropped: the stage runs (and finds its artifact) instead
