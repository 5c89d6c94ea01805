"""Artifact store: atomic writes, manifests, corruption -> quarantine + miss, races, bad roots."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from cku_core.errors import CKUError
from cku_core.store import (
    MANIFEST,
    ArtifactMissingError,
    ArtifactStore,
    Manifest,
    Provenance,
    StoreError,
    make_key,
)

PROV = {"model_digest": "m" * 64, "data_digest": "d" * 64, "config_digest": "c" * 64}


def write_two(folder: Path) -> None:
    (folder / "a.bin").write_bytes(b"\x00\x01" * 1000)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.json").write_text('{"x": 1}')


def test_put_then_get_roundtrip_with_manifest(store: ArtifactStore) -> None:
    art = store.put("mask", "k1", write_two, stage_version="3", provenance=PROV)
    assert art.path == store.root / "mask" / "k1"
    manifest = json.loads((art.path / MANIFEST).read_text())
    assert manifest["stage"] == "mask" and manifest["key"] == "k1" and manifest["stage_version"] == "3"
    assert set(manifest["files"]) == {"a.bin", "sub/b.json"}
    assert manifest["files"]["a.bin"]["size"] == 2000
    assert manifest["provenance"]["model_digest"] == "m" * 64
    assert manifest["provenance"]["code_version"] and manifest["provenance"]["created_at"]
    again = store.get("mask", "k1")
    assert again is not None and again.manifest == art.manifest
    assert again.file("sub/b.json").read_text() == '{"x": 1}'
    # nothing temporary is left next to the artifact
    assert [p.name for p in (store.root / "mask").iterdir()] == ["k1"]


def test_get_missing_is_none_and_open_raises(store: ArtifactStore) -> None:
    assert store.get("mask", "absent") is None
    with pytest.raises(ArtifactMissingError, match="rerun the stage"):
        store.open("mask", "absent")


def test_get_or_put_reports_cache_hit(store: ArtifactStore) -> None:
    calls = []

    def write(folder: Path) -> None:
        calls.append(1)
        (folder / "x").write_text("1")

    _, cached = store.get_or_put("s", "k", write, stage_version="1")
    assert not cached
    art, cached = store.get_or_put("s", "k", write, stage_version="1")
    assert cached and len(calls) == 1 and art.file("x").read_text() == "1"


def test_ref_roundtrip_and_content_digest(store: ArtifactStore) -> None:
    art = store.put_files("ckpt", "k", {"w.bin": b"abc"}, stage_version="1")
    ref = art.ref()
    assert store.open_ref(ref.model_dump()).path == art.path
    # the content digest ignores provenance (created_at), so identical recomputations agree
    other = ArtifactStore(store.root.parent / "other").put_files("ckpt", "k", {"w.bin": b"abc"}, stage_version="1")
    assert other.ref().content_digest == ref.content_digest


def test_make_key_is_deterministic_and_sensitive() -> None:
    base = make_key("mask", "1", {"scores": "a"}, {"nlr": 0.8})
    assert base == make_key("mask", "1", {"scores": "a"}, {"nlr": 0.8})
    assert len(base) == 64
    assert base != make_key("mask", "2", {"scores": "a"}, {"nlr": 0.8})
    assert base != make_key("mask", "1", {"scores": "b"}, {"nlr": 0.8})
    assert base != make_key("mask", "1", {"scores": "a"}, {"nlr": 0.7})


@pytest.mark.parametrize("corrupt", ["flip_byte", "truncate", "delete_file", "extra_file", "no_manifest", "bad_manifest"])
def test_corrupt_artifact_is_quarantined_and_reported_as_miss(
    store: ArtifactStore, corrupt: str, caplog: pytest.LogCaptureFixture
) -> None:
    art = store.put("ckpt", "k", write_two, stage_version="1", provenance=PROV)
    target = art.path / "a.bin"
    if corrupt == "flip_byte":
        data = bytearray(target.read_bytes())
        data[10] ^= 0xFF
        target.write_bytes(bytes(data))
    elif corrupt == "truncate":
        target.write_bytes(target.read_bytes()[:-1])
    elif corrupt == "delete_file":
        target.unlink()
    elif corrupt == "extra_file":
        (art.path / "stray.txt").write_text("?")
    elif corrupt == "no_manifest":
        (art.path / MANIFEST).unlink()
    elif corrupt == "bad_manifest":
        (art.path / MANIFEST).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="cku.store"):
        assert store.get("ckpt", "k") is None
    assert "corrupt" in caplog.text and ".quarantine" in caplog.text
    assert not art.path.exists()
    quarantined = list((store.quarantine_dir / "ckpt").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith("k-")
    # the caller recomputes: a fresh put works and is served again
    fresh = store.put("ckpt", "k", write_two, stage_version="1")
    assert store.get("ckpt", "k") is not None and fresh.path == art.path


def test_manifest_for_another_key_is_corrupt(store: ArtifactStore) -> None:
    art = store.put_files("s", "k1", {"f": b"1"}, stage_version="1")
    os.rename(art.path, store.root / "s" / "k2")
    assert store.get("s", "k2") is None


@pytest.mark.parametrize("stage,key", [("..", "k"), ("mask", ".."), ("mask", "../escape"), ("a/b", "k"),
                                        ("/abs", "k"), ("mask", ""), (".quarantine", "k"), ("mask", ".tmp-x")])
def test_path_escaping_names_are_rejected(store: ArtifactStore, stage: str, key: str) -> None:
    with pytest.raises(StoreError, match="invalid artifact") as info:
        store.put_files(stage, key, {"f": b"1"}, stage_version="1")
    assert isinstance(info.value, CKUError) and "\n" not in str(info.value)
    with pytest.raises(StoreError):
        store.get(stage, key)
    assert not (store.root.parent / "escape").exists()


def test_file_names_in_put_files_cannot_escape(store: ArtifactStore) -> None:
    for name in ("../x", "/etc/x", MANIFEST, "a/../../x"):
        with pytest.raises(StoreError, match="invalid artifact file name"):
            store.put_files("s", "k", {name: b"1"}, stage_version="1")


def test_writer_exception_leaves_nothing(store: ArtifactStore) -> None:
    def boom(folder: Path) -> None:
        (folder / "half").write_text("partial")
        raise RuntimeError("stage bug")

    with pytest.raises(RuntimeError, match="stage bug"):
        store.put("s", "k", boom, stage_version="1")
    assert list((store.root / "s").iterdir()) == []
    assert store.get("s", "k") is None


def test_disk_full_during_write_cleans_up(store: ArtifactStore) -> None:
    def full(folder: Path) -> None:
        (folder / "big").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="no space left on device") as info:
        store.put("s", "k", full, stage_version="1")
    assert "\n" not in str(info.value)
    assert list((store.root / "s").iterdir()) == []


def test_disk_full_while_writing_manifest_cleans_up(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def open_full(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(path).endswith(MANIFEST) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_full)
    with pytest.raises(StoreError, match="no space left"):
        store.put_files("s", "k", {"f": b"1"}, stage_version="1")
    monkeypatch.undo()
    assert list((store.root / "s").iterdir()) == []


def test_unwritable_root_is_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path / "ro")

    def denied(self: Path, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(StoreError, match="not writable") as info:
        store.put_files("s", "k", {"f": b"1"}, stage_version="1")
    assert "\n" not in str(info.value) and "CKU_ARTIFACT_ROOT" in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_root_by_permissions(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="not writable"):
            ArtifactStore(root).put_files("s", "k", {"f": b"1"}, stage_version="1")
    finally:
        root.chmod(0o755)


def test_root_that_is_a_file_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="not a directory|not writable"):
        ArtifactStore(tmp_path / "file").put_files("s", "k", {"f": b"1"}, stage_version="1")


def test_root_from_env_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKU_ARTIFACT_ROOT", str(tmp_path / "env"))
    assert ArtifactStore().root == tmp_path / "env"
    assert ArtifactStore(tmp_path / "arg").root == tmp_path / "arg"
    monkeypatch.delenv("CKU_ARTIFACT_ROOT")
    assert ArtifactStore().root == Path.cwd() / "artifacts"


def test_lost_rename_race_keeps_winner(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate the other process publishing between our manifest and our rename."""
    import cku_core.store as store_mod

    real_rename = os.rename
    winner = {}

    def racing_rename(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == store.root / "s" / "k" and not winner:
            winner["started"] = True  # the winner's own rename must go through untouched
            winner["art"] = ArtifactStore(store.root).put_files("s", "k", {"f": b"same"}, stage_version="1")
        return real_rename(src, dst)

    monkeypatch.setattr(store_mod.os, "rename", racing_rename)
    mine = store.put_files("s", "k", {"f": b"same"}, stage_version="1")
    assert mine.manifest.provenance.created_at == winner["art"].manifest.provenance.created_at
    assert mine.manifest == winner["art"].manifest  # we got the winner's copy
    assert [p.name for p in (store.root / "s").iterdir()] == ["k"]  # our temp copy was discarded


def test_rename_race_over_corrupt_leftover_replaces_it(store: ArtifactStore) -> None:
    leftover = store.root / "s" / "k"
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("from a crashed writer that bypassed the store")
    art = store.put_files("s", "k", {"f": b"1"}, stage_version="1")
    assert store.get("s", "k") is not None and art.file("f").read_bytes() == b"1"
    assert len(list((store.quarantine_dir / "s").iterdir())) == 1


def _race_writer(root: str, n: int, q: "mp.Queue[str]") -> None:
    store = ArtifactStore(root)
    for i in range(n):
        art = store.put("race", f"k{i % 3}", lambda d: (d / "w.bin").write_bytes(bytes(range(256)) * 512),
                        stage_version="1")
        q.put(art.manifest.content_digest())


def test_concurrent_processes_writing_same_keys(store: ArtifactStore) -> None:
    ctx = mp.get_context("fork")  # real separate processes; fork skips re-importing torch
    q: mp.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_race_writer, args=(str(store.root), 12, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    digests = {q.get(timeout=5) for _ in range(48)}
    assert len(digests) == 1
    assert sorted(p.name for p in (store.root / "race").iterdir()) == ["k0", "k1", "k2"]
    assert all(store.get("race", k) is not None for k in ("k0", "k1", "k2"))
    assert not store.quarantine_dir.exists()


def test_remove_stale_tmp(store: ArtifactStore) -> None:
    stale = store.root / "s" / ".tmp-k-dead"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    fresh = store.root / "s" / ".tmp-k-live"
    fresh.mkdir()
    assert store.remove_stale_tmp(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists()


def test_manifest_model_documents_every_field() -> None:
    for model in (Manifest, Provenance):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
