"""ArtifactStore on an object store (moto's S3 server): manifest-last uploads, verified downloads into
a local cache, corruption and missing objects detected and quarantined on the remote, races between
writers, and one-line errors for a bucket that does not exist or an endpoint that does not answer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cku_core.preflight import check_root
from cku_core.remote import RemoteRoot, check_remote_root
from cku_core.store import ArtifactStore, StoreError, make_key
from cku_core.store_remote import PAYLOAD_PREFIX

FILES = {"weights.bin": b"w" * 1000, "sub/info.json": b'{"a": 1}'}


def fresh_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, name: str) -> ArtifactStore:
    """Another machine: the same root URL, an empty local cache."""
    monkeypatch.setenv("CKU_CACHE_DIR", str(tmp_path / f"cache-{name}"))
    return ArtifactStore(url)


def payload_of(fs, s3, prefix: str, stage: str, key: str) -> str:  # noqa: ANN001
    [folder] = [p for p in fs.ls(f"{s3.bucket}/{prefix}/{stage}/{key}") if PAYLOAD_PREFIX in p]
    return folder


def test_round_trip_between_workers(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url = s3.url("cku/artifacts")
    writer = ArtifactStore(url)
    key = make_key("scores", "1", {"model": "m"})
    art = writer.put_files("scores", key, FILES, stage_version="1", provenance={"model_digest": "m"})
    assert art.path.is_dir() and str(art.path).startswith(str(tmp_path / "cache"))  # staged locally, kept
    assert writer.location == url and url in repr(writer)

    fs = s3.fs()
    names = sorted(p.split(f"{key}/", 1)[1] for p in fs.find(f"{s3.bucket}/cku/artifacts/scores/{key}"))
    digest = art.manifest.content_digest()
    assert names == [f"{PAYLOAD_PREFIX}{digest}/sub/info.json", f"{PAYLOAD_PREFIX}{digest}/weights.bin", "manifest.json"]

    reader = fresh_worker(monkeypatch, tmp_path, url, "b")
    assert reader.check("scores", key)
    got = reader.get("scores", key)
    assert got is not None and got.path != art.path and got.path.is_dir()
    assert got.file("weights.bin").read_bytes() == FILES["weights.bin"]
    assert (got.path / "sub" / "info.json").read_bytes() == FILES["sub/info.json"]
    assert got.ref().content_digest == art.ref().content_digest
    assert reader.open_ref(art.ref()).manifest.provenance.model_digest == "m"
    assert reader.keys("scores") == [key] and reader.keys("mask") == []


def test_manifest_is_uploaded_last(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    writes: list[str] = []
    upload, put_bytes = RemoteRoot.upload, RemoteRoot.put_bytes
    monkeypatch.setattr(RemoteRoot, "upload", lambda self, local, rel: (writes.append(rel), upload(self, local, rel))[1])
    monkeypatch.setattr(RemoteRoot, "put_bytes",
                        lambda self, rel, data, exclusive=False: (writes.append(rel), put_bytes(self, rel, data, exclusive=exclusive))[1])
    ArtifactStore(s3.url("a")).put_files("mask", "k1", FILES, stage_version="1")
    assert len(writes) == 3 and writes[-1] == "mask/k1/manifest.json"


def test_interrupted_upload_is_a_miss_and_left_alone(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url = s3.url("a")
    upload = RemoteRoot.upload
    calls = []

    def dies_on_second_file(self, local, rel):  # noqa: ANN001
        calls.append(rel)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the writer is killed mid-upload
        upload(self, local, rel)

    monkeypatch.setattr(RemoteRoot, "upload", dies_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        ArtifactStore(url).put_files("mask", "k1", FILES, stage_version="1")
    monkeypatch.setattr(RemoteRoot, "upload", upload)
    monkeypatch.setenv("CKU_CACHE_DIR", str(Path(s3.env["CKU_CACHE_DIR"]) / "other"))
    store = ArtifactStore(url)
    assert store.get("mask", "k1") is None and not store.check("mask", "k1")
    fs = s3.fs()
    assert len(fs.find(f"{s3.bucket}/a/mask/k1")) == 1      # the first file stays: maybe still uploading
    assert not fs.exists(f"{s3.bucket}/a/.quarantine")
    assert store.put_files("mask", "k1", FILES, stage_version="1").path.is_dir()   # a rerun completes it
    assert store.get("mask", "k1") is not None


@pytest.mark.parametrize("damage", ["same_size", "truncated", "deleted", "manifest_garbage"])
def test_corrupt_or_missing_object_is_quarantined_on_the_remote(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 damage: str) -> None:  # noqa: ANN001
    url = s3.url("a")
    ArtifactStore(url).put_files("mask", "k1", FILES, stage_version="1")
    fs = s3.fs()
    obj = f"{payload_of(fs, s3, 'a', 'mask', 'k1')}/weights.bin"
    if damage == "same_size":
        fs.pipe_file(obj, b"x" * 1000)          # only the sha256 can tell: caught at download
    elif damage == "truncated":
        fs.pipe_file(obj, b"w" * 10)
    elif damage == "deleted":
        fs.rm_file(obj)
    else:
        fs.pipe_file(f"{s3.bucket}/a/mask/k1/manifest.json", b"{not json")

    reader = fresh_worker(monkeypatch, tmp_path, url, "b")
    assert reader.get("mask", "k1") is None
    assert not fs.exists(f"{s3.bucket}/a/mask/k1/manifest.json")
    [copy] = reader.remote.quarantined("mask")
    assert copy.startswith("k1-")
    kept = fs.find(f"{s3.bucket}/a/.quarantine/mask/{copy}")
    assert any(p.endswith("manifest.json") for p in kept)   # evidence kept for a post-mortem
    # The next writer recomputes under the same key and everyone gets the good copy.
    reader.put_files("mask", "k1", FILES, stage_version="1")
    again = fresh_worker(monkeypatch, tmp_path, url, "c").get("mask", "k1")
    assert again is not None and again.file("weights.bin").read_bytes() == FILES["weights.bin"]


def test_corrupt_local_cache_is_downloaded_again(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    store = ArtifactStore(s3.url("a"))
    art = store.put_files("mask", "k1", FILES, stage_version="1")
    (art.path / "weights.bin").write_bytes(b"tampered")
    got = store.get("mask", "k1")
    assert got is not None and got.file("weights.bin").read_bytes() == FILES["weights.bin"]
    assert store.remote.quarantined("mask") == []            # the remote copy was fine


def test_racing_writers_first_manifest_wins(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url = s3.url("a")
    first = fresh_worker(monkeypatch, tmp_path, url, "1").put_files("checkpoint", "k", {"delta": b"run one"},
                                                                    stage_version="1")
    loser = fresh_worker(monkeypatch, tmp_path, url, "2")
    second = loser.put_files("checkpoint", "k", {"delta": b"run two, other bytes"}, stage_version="1")
    # Same key, different bytes (a non-deterministic recomputation): the loser serves the winner's copy
    # and deletes its own uploaded files instead of leaving them next to the winner's.
    assert second.manifest.content_digest() == first.manifest.content_digest()
    assert second.file("delta").read_bytes() == b"run one"
    fs = s3.fs()
    assert [p for p in fs.ls(f"{s3.bucket}/a/checkpoint/k") if PAYLOAD_PREFIX in p] == [
        f"{s3.bucket}/a/checkpoint/k/{PAYLOAD_PREFIX}{first.manifest.content_digest()}"]


def test_get_or_put_and_discard(s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url = s3.url("a")
    calls = []

    def write(folder: Path) -> None:
        calls.append(1)
        (folder / "x.json").write_text(json.dumps({"v": 1}))

    art, cached = ArtifactStore(url).get_or_put("data", "k", write, stage_version="1")
    assert not cached and calls == [1]
    other = fresh_worker(monkeypatch, tmp_path, url, "b")
    art2, cached2 = other.get_or_put("data", "k", write, stage_version="1")
    assert cached2 and calls == [1] and (art2.path / "x.json").read_text() == '{"v": 1}'
    assert other.discard("data", "k") and not other.discard("data", "k")
    assert other.get("data", "k") is None and not art2.path.exists()
    assert not s3.fs().find(f"{s3.bucket}/a/data/k")


def test_bucket_that_does_not_exist_is_one_line(s3) -> None:  # noqa: ANN001
    url = "s3://no-such-bucket-cku/artifacts"
    with pytest.raises(StoreError) as err:
        ArtifactStore(url).put_files("mask", "k1", FILES, stage_version="1")
    message = str(err.value)
    assert "\n" not in message and "no-such-bucket-cku" in message and "does not exist" in message
    assert "CKU_ARTIFACT_ROOT" in message
    with pytest.raises(StoreError, match=r"artifact root: bucket 'no-such-bucket-cku' .* does not exist .*create it"):
        check_root(url, "CKU_ARTIFACT_ROOT", None, "artifact root", "choose another with CKU_ARTIFACT_ROOT", StoreError)
    cache = Path(s3.env["CKU_CACHE_DIR"])
    assert not any(p.is_file() for p in cache.rglob("*"))     # the staging copy was removed


def test_unreachable_endpoint_is_one_line_and_fast(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CKU_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(StoreError) as err:
        check_remote_root(s3.url("a"), "artifact root", "CKU_ARTIFACT_ROOT", StoreError)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "CKU_S3_ENDPOINT_URL" in message


def test_storage_options_json_is_checked(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("CKU_STORAGE_OPTIONS", "{bad")
    with pytest.raises(StoreError, match="CKU_STORAGE_OPTIONS is not valid JSON"):
        ArtifactStore(s3.url("a"))


def test_local_roots_are_untouched(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art")
    assert store.remote is None and store.location == str(tmp_path / "art")
    art = store.put_files("mask", "k1", FILES, stage_version="1")
    assert art.path == tmp_path / "art" / "mask" / "k1"
    assert hashlib.sha256((art.path / "weights.bin").read_bytes()).hexdigest() == art.manifest.files["weights.bin"].sha256
