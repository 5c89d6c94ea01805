"""Content-addressed artifact store: `<root>/<stage>/<key>/` folders that are complete or absent.

Write protocol (why each step is there):
1. Files are written into a temporary sibling folder `<root>/<stage>/.tmp-<key>-<uuid>/`, on the
   same file system as the final folder, so that step 3 is an atomic rename.
2. `manifest.json` (stage, key, stage version, sha256 + size of every file, provenance) is written
   last, so its presence means every other file was written completely.
3. The temporary folder is renamed to `<root>/<stage>/<key>/`. If another process won the race and
   the folder already holds a valid artifact, our copy is discarded and theirs is returned: both
   computed the same content-addressed key, so either copy is correct.

`get_or_put` holds an advisory lock per stage/key (`<root>/.locks/`, `flock`, released by the kernel
even when the holder is SIGKILLed) while it computes, so concurrent runs that need the same artifact
wait for the first one and reuse it instead of computing it again; see docs/reliability.md.

Read protocol: `get` checks the manifest and the sha256 of every file. A folder that fails any check
is moved to `<root>/.quarantine/` (kept for a post-mortem, a warning is logged) and reported as a
miss, so the caller recomputes it. A corrupt artifact is never served and never crashes a run.

The root may be an object-store URL (`s3://bucket/prefix`): artifacts are then staged and cached in
a local folder (`cku_core.remote.cache_root`, so `Artifact.path` is always a local folder that
transformers and safetensors can load) and uploaded with the manifest last; see
`cku_core.store_remote` for that protocol and docs/cluster.md for what concurrent writers see.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cku_core.errors import CKUError
from cku_core.fingerprint import canonical_json
from cku_core.remote import CACHE_ENV, RemoteRoot, RemoteStorageError, cache_root, is_remote
from cku_core.version import CODE_VERSION

log = logging.getLogger("cku.store")

ROOT_ENV = "CKU_ARTIFACT_ROOT"
DEFAULT_ROOT = Path("artifacts")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
QUARANTINE = ".quarantine"
LOCKS = ".locks"
_TMP_PREFIX = ".tmp-"
# Letters, digits, '.', '_', '-'; must start with a letter or digit, so '.', '..', '.tmp-*' and
# '.quarantine' can never be a stage or key, and no name can contain a path separator.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CHUNK = 1 << 20
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class StoreError(CKUError):
    """The artifact store cannot do what was asked (bad name, unwritable root, disk full...)."""


class ArtifactMissingError(StoreError):
    """`open` found no valid artifact for a stage/key that the caller requires."""


class FileEntry(BaseModel):
    """One file of an artifact, as recorded in its manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(description="Hex sha256 of the file's bytes.")
    size: int = Field(ge=0, description="Size of the file in bytes.")


class Provenance(BaseModel):
    """Where an artifact came from; recorded in its manifest and copied into result rows."""

    model_config = ConfigDict(extra="allow")

    model_digest: str | None = Field(None, description="Fingerprint of the model weights the stage read.")
    data_digest: str | None = Field(None, description="Digest of the data set(s) the stage read.")
    config_digest: str | None = Field(None, description="Digest of the stage's canonical JSON config.")
    code_version: str = Field(CODE_VERSION, description="cku package version + git commit that wrote it.")
    created_at: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"),
        description="UTC time the artifact was written (ISO 8601).",
    )


class Manifest(BaseModel):
    """The last file written into an artifact folder: its presence means the artifact is complete."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(MANIFEST_FORMAT, description="Manifest layout version.")
    stage: str = Field(description="Pipeline stage that wrote the artifact (e.g. 'mask').")
    key: str = Field(description="Content-addressed key: hash of stage, stage version, inputs, config.")
    stage_version: str = Field(description="Bumped when the stage's code changes what it writes.")
    files: dict[str, FileEntry] = Field(description="Relative POSIX path -> digest and size, manifest excluded.")
    provenance: Provenance = Field(description="Model/data/config digests, code version, creation time.")

    def content_digest(self) -> str:
        """sha256 over the file names and digests only: equal for byte-identical recomputations."""
        payload = {name: entry.sha256 for name, entry in self.files.items()}
        return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class ArtifactRef(BaseModel):
    """A small JSON-serialisable pointer to an artifact: what tasks pass instead of tensors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str = Field(description="Stage folder of the artifact.")
    key: str = Field(description="Key folder of the artifact.")
    path: str = Field(description="Absolute path of the artifact folder when it was written or read.")
    content_digest: str = Field(description="Manifest.content_digest(): use it in downstream cache keys.")


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on disk."""

    path: Path
    manifest: Manifest

    @property
    def stage(self) -> str:
        return self.manifest.stage

    @property
    def key(self) -> str:
        return self.manifest.key

    def file(self, name: str) -> Path:
        """Path of one file listed in the manifest (a name not in it is a caller bug)."""
        if name not in self.manifest.files:
            raise StoreError(f"artifact {self.stage}/{self.key} has no file {name!r}; it has {sorted(self.manifest.files)}")
        return self.path / name

    def ref(self) -> ArtifactRef:
        return ArtifactRef(stage=self.stage, key=self.key, path=str(self.path),
                           content_digest=self.manifest.content_digest())


def make_key(stage: str, stage_version: str, inputs: dict[str, Any], config: Any = None) -> str:
    """The content-addressed key of a stage: sha256 of its name, version, input digests and config.

    `inputs` maps input names to digests (model fingerprint, data digest, upstream artifact keys);
    `config` is anything canonical_json can serialise (pydantic models: pass `.model_dump()`).
    """
    payload = {"stage": stage, "stage_version": stage_version, "inputs": inputs, "config": config}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def check_name(kind: str, name: str) -> str:
    """Reject anything that could leave `<root>/<stage>/` ('..', '/', absolute paths, hidden names)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise StoreError(
            f"invalid artifact {kind} {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/' or '..')"
        )
    return name


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The artifact root: the argument, else $CKU_ARTIFACT_ROOT, else ./artifacts."""
    chosen = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().absolute()


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _iter_files(folder: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            yield Path(dirpath) / name


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; some file systems refuse O_RDONLY on folders, which is fine.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ArtifactStore:
    """Content-addressed, verified, crash- and race-safe storage of stage outputs.

    `root` is a folder or an object-store URL. For a URL, `self.root` is the local cache folder of
    that URL (staging and verified downloads) and `self.remote` does the uploads and checks.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        chosen = root if root is not None else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
        self.remote: Any = None  # cku_core.store_remote.RemoteArtifacts for an object-store root
        if is_remote(chosen):
            from cku_core.store_remote import RemoteArtifacts

            try:
                self.remote = RemoteArtifacts(RemoteRoot.open(str(chosen), f"{ROOT_ENV} or --artifact-root"))
            except RemoteStorageError as exc:
                raise StoreError(str(exc)) from None
            self.root = cache_root("artifacts", self.remote.root.url)
        else:
            self.root = resolve_root(chosen)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.location!r})"

    @property
    def location(self) -> str:
        """The root as the user gave it: a folder, or the object-store URL."""
        return self.remote.root.url if self.remote is not None else str(self.root)

    # ---------------------------------------------------------------- paths
    def path_for(self, stage: str, key: str) -> Path:
        return self.root / check_name("stage", stage) / check_name("key", key)

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE

    # ---------------------------------------------------------------- reading
    def get(self, stage: str, key: str) -> Artifact | None:
        """The verified artifact, or None (absent, or corrupt and now quarantined): recompute on None.

        For an object-store root the artifact is downloaded into the local cache first (or served
        from it while its content digest equals the remote manifest's).
        """
        if self.remote is not None:
            return self._remote_call(stage, key, lambda: self._get_remote(stage, key))
        return self._get_local(stage, key)

    def check(self, stage: str, key: str) -> bool:
        """Is the artifact there and intact? What the Prefect cache-key function asks before a hit.

        Local: the full `get` (every digest). Remote: the manifest and every object's presence and
        size, without downloading (digests are verified when a stage downloads the files).
        """
        if self.remote is None:
            return self.get(stage, key) is not None
        check_name("stage", stage)
        check_name("key", key)
        return self._remote_call(stage, key, lambda: self.remote.check(stage, key)) is not None

    def _get_remote(self, stage: str, key: str) -> Artifact | None:
        manifest = self.remote.check(check_name("stage", stage), check_name("key", key))
        if manifest is None:
            return None
        cached = self._get_local(stage, key)
        if cached is not None and cached.manifest.content_digest() == manifest.content_digest():
            return cached
        final = self.path_for(stage, key)
        tmp = self._make_tmp(final)
        try:
            if not self.remote.download(stage, key, manifest, tmp):
                return None
            return self._install_cached(tmp, final, manifest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _install_cached(self, tmp: Path, final: Path, manifest: Manifest) -> Artifact:
        """Move a verified download into the cache, replacing an outdated copy (never a current one:
        another process may be reading that)."""
        for _attempt in range(3):
            try:
                os.rename(tmp, final)
                return Artifact(path=final, manifest=manifest)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            current = self._get_local(final.parent.name, final.name)
            if current is not None and current.manifest.content_digest() == manifest.content_digest():
                return current
            self._discard_local(final.parent.name, final.name)
        raise StoreError(f"could not replace the cached copy {final}; remove it and rerun")

    def _remote_call(self, stage: str, key: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RemoteStorageError as exc:
            raise StoreError(f"artifact {stage}/{key}: {exc}") from None

    def _get_local(self, stage: str, key: str) -> Artifact | None:
        final = self.path_for(stage, key)
        try:
            inode = final.stat().st_ino
        except (FileNotFoundError, NotADirectoryError):
            return None
        problem = self._verify(final, stage, key)
        if isinstance(problem, Artifact):
            return problem
        self._quarantine(final, inode, stage, key, problem)
        return None

    def open(self, stage: str, key: str) -> Artifact:
        """Like `get`, for callers that cannot recompute: a miss is a one-line error."""
        artifact = self.get(stage, key)
        if artifact is None:
            raise ArtifactMissingError(
                f"artifact {stage}/{key} is missing or was corrupt (quarantined) under {self.location}; "
                "rerun the stage that produces it"
            )
        return artifact

    def open_ref(self, ref: ArtifactRef | dict[str, Any]) -> Artifact:
        """Open the artifact an upstream task returned; a changed content digest counts as missing."""
        ref = ArtifactRef.model_validate(ref)
        artifact = self.open(ref.stage, ref.key)
        if artifact.manifest.content_digest() != ref.content_digest:
            raise ArtifactMissingError(
                f"artifact {ref.stage}/{ref.key} was rewritten with different content since it was "
                "referenced; rerun the flow so downstream stages see the new content"
            )
        return artifact

    def has(self, stage: str, key: str) -> bool:
        return self.get(stage, key) is not None

    def _verify(self, folder: Path, stage: str, key: str) -> Artifact | str:
        """The artifact if every check passes, else a short description of the first problem."""
        try:
            manifest = Manifest.model_validate_json((folder / MANIFEST).read_bytes())
        except FileNotFoundError:
            return "no manifest.json (incomplete write)"
        except (OSError, ValidationError, ValueError) as exc:
            return f"unreadable manifest ({type(exc).__name__})"
        if (manifest.stage, manifest.key) != (stage, key):
            return f"manifest names {manifest.stage}/{manifest.key}"
        on_disk = {p.relative_to(folder).as_posix() for p in _iter_files(folder)} - {MANIFEST}
        if on_disk != set(manifest.files):
            missing, extra = set(manifest.files) - on_disk, on_disk - set(manifest.files)
            return f"file list differs from manifest (missing {sorted(missing)}, unexpected {sorted(extra)})"
        for name, entry in manifest.files.items():
            try:
                digest, size = sha256_file(folder / name)
            except OSError as exc:
                return f"cannot read {name} ({exc.strerror or exc})"
            if (digest, size) != (entry.sha256, entry.size):
                return f"{name} does not match its manifest digest"
        return Artifact(path=folder, manifest=manifest)

    def _quarantine(self, folder: Path, inode: int, stage: str, key: str, why: str) -> None:
        """Move a bad artifact out of the way (never delete evidence); a failure to move is only logged."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = self.quarantine_dir / stage / f"{key}-{stamp}-{uuid.uuid4().hex[:8]}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Another process may have quarantined the bad folder and published a good one meanwhile:
            # only move the very folder we verified (same inode), never its replacement.
            if folder.stat().st_ino != inode:
                return
            os.rename(folder, target)
        except FileNotFoundError:
            return  # another process quarantined (or replaced) it first
        except OSError as exc:
            log.warning("artifact %s/%s is corrupt (%s) and could not be quarantined (%s); treating it as missing",
                        stage, key, why, exc)
            return
        log.warning("artifact %s/%s is corrupt (%s); moved to %s, it will be recomputed", stage, key, why, target)

    # ---------------------------------------------------------------- writing
    def put(
        self,
        stage: str,
        key: str,
        write: Callable[[Path], None],
        *,
        stage_version: str,
        provenance: Provenance | dict[str, Any] | None = None,
    ) -> Artifact:
        """Create an artifact: `write(folder)` writes its files into an empty temporary folder.

        Returns the stored artifact (ours, or an identical-key one another process stored first).
        Raises StoreError for an unwritable root or a full disk, after removing the temporary folder.
        An exception raised by `write` itself propagates unchanged, also after the cleanup.
        """
        final = self.path_for(stage, key)
        tmp = self._make_tmp(final)
        try:
            try:
                write(tmp)
            except OSError as exc:
                # Storage failures inside the stage's writer get the store's one-line message;
                # any other OSError is the stage's own bug and keeps its traceback.
                if exc.errno not in _STORAGE_ERRNOS:
                    raise
                raise self._write_error(exc, stage, key) from exc
            try:
                manifest = self._write_manifest(tmp, stage, key, stage_version, provenance)
                if self.remote is not None:
                    return self._publish_remote(tmp, final, stage, key, manifest)
                return self._publish(tmp, final, stage, key, manifest)
            except OSError as exc:
                raise self._write_error(exc, stage, key) from exc
        finally:
            # After a successful publish tmp no longer exists; otherwise nothing partial is left.
            shutil.rmtree(tmp, ignore_errors=True)

    def put_files(self, stage: str, key: str, files: dict[str, bytes], *, stage_version: str,
                  provenance: Provenance | dict[str, Any] | None = None) -> Artifact:
        """Convenience for small artifacts given as {relative name: bytes}."""
        for name in files:
            if name == MANIFEST or not all(_NAME_RE.fullmatch(part) for part in name.split("/")):
                raise StoreError(f"invalid artifact file name {name!r}")

        def write(folder: Path) -> None:
            for name, data in files.items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)

        return self.put(stage, key, write, stage_version=stage_version, provenance=provenance)

    def get_or_put(self, stage: str, key: str, write: Callable[[Path], None], *, stage_version: str,
                   provenance: Provenance | dict[str, Any] | None = None) -> tuple[Artifact, bool]:
        """(artifact, cached): the stored artifact if valid, else a freshly written one."""
        found = self.get(stage, key)
        if found is not None:
            return found, True
        with self._key_lock(stage, key):
            found = self.get(stage, key)  # written by another process while we waited for the lock
            if found is not None:
                return found, True
            return self.put(stage, key, write, stage_version=stage_version, provenance=provenance), False

    @contextlib.contextmanager
    def _key_lock(self, stage: str, key: str) -> Iterator[None]:
        """Exclusive advisory lock on one stage/key across processes (and threads); no-op without fcntl."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: races are still safe, only duplicated work
            yield
            return
        path = self.root / LOCKS / f"{check_name('stage', stage)}--{check_name('key', key)}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise self._write_error(exc, stage, key) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("artifact %s/%s is being computed by another process; waiting to reuse it", stage, key)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def discard(self, stage: str, key: str) -> bool:
        """Remove an artifact (atomically out of readers' sight, then deleted); False if it was absent."""
        if self.remote is not None:
            check_name("stage", stage)
            check_name("key", key)
            removed = self._remote_call(stage, key, lambda: self.remote.discard(stage, key))
            self._discard_local(stage, key)
            return bool(removed)
        return self._discard_local(stage, key)

    def _discard_local(self, stage: str, key: str) -> bool:
        final = self.path_for(stage, key)
        doomed = final.parent / f"{_TMP_PREFIX}{key}-discard-{uuid.uuid4().hex}"
        try:
            os.rename(final, doomed)
        except FileNotFoundError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def _make_tmp(self, final: Path) -> Path:
        tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise self._write_error(exc, final.parent.name, final.name) from exc
        return tmp

    def _write_manifest(self, tmp: Path, stage: str, key: str, stage_version: str,
                        provenance: Provenance | dict[str, Any] | None) -> Manifest:
        files: dict[str, FileEntry] = {}
        for path in sorted(_iter_files(tmp)):
            name = path.relative_to(tmp).as_posix()
            if name == MANIFEST:
                raise StoreError(f"stage {stage} wrote its own {MANIFEST}; that name is reserved for the store")
            with open(path, "rb+") as f:
                os.fsync(f.fileno())  # data on disk before the manifest that vouches for it
            digest, size = sha256_file(path)
            files[name] = FileEntry(sha256=digest, size=size)
        manifest = Manifest(stage=stage, key=key, stage_version=str(stage_version), files=files,
                            provenance=Provenance.model_validate(provenance or {}))
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.write(manifest.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        return manifest

    def _publish_remote(self, tmp: Path, final: Path, stage: str, key: str, manifest: Manifest) -> Artifact:
        """Upload (manifest last), then keep the staged folder as the local cached copy."""
        winner = self._remote_call(stage, key, lambda: self.remote.publish(tmp, stage, key, manifest))
        if winner.content_digest() != manifest.content_digest():
            found = self.get(stage, key)  # another writer's different bytes won: serve theirs
            if found is None:
                raise ArtifactMissingError(f"artifact {stage}/{key} vanished from {self.location} right after "
                                           "another writer published it; rerun the stage")
            return found
        return self._install_cached(tmp, final, manifest)

    def _publish(self, tmp: Path, final: Path, stage: str, key: str, manifest: Manifest) -> Artifact:
        """Atomically rename tmp into place; on a lost race, keep the winner's valid copy."""
        for _attempt in range(3):
            try:
                os.rename(tmp, final)
                _fsync_dir(final.parent)
                return Artifact(path=final, manifest=manifest)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            existing = self.get(stage, key)  # quarantines it if it is a corrupt leftover
            if existing is not None:
                return existing
        raise StoreError(f"could not publish artifact {stage}/{key} under {self.root}: the folder keeps reappearing corrupt")

    def _write_error(self, exc: OSError, stage: str, key: str) -> StoreError:
        where = f"artifact {stage}/{key} under {self.location}"
        # With an object-store root, local writes go to the cache folder: name that and its setting.
        folder, setting = (f"local cache {self.root} of {self.location}", CACHE_ENV) if self.remote is not None \
            else (f"artifact root {self.root}", f"{ROOT_ENV} or --artifact-root")
        if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
            return StoreError(f"no space left on device while writing {where}; free space or set "
                              f"{setting.split(' or ')[0]} to a larger disk (the partial write was removed)")
        if isinstance(exc, PermissionError) or exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreError(f"{folder} is not writable ({exc.strerror or exc}); "
                              f"choose another with {setting}")
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and not self.root.is_dir():
            return StoreError(f"{folder} is not a directory; "
                              f"choose another with {setting}")
        return StoreError(f"cannot write {where}: {exc.strerror or exc}")

    # ---------------------------------------------------------------- housekeeping
    def remove_stale_tmp(self, older_than_s: float = 24 * 3600) -> int:
        """Delete temporary folders left by crashed writers (only old ones: a live writer may own new ones)."""
        import time

        removed = 0
        if not self.root.is_dir():
            return 0
        for tmp in self.root.glob(f"*/{_TMP_PREFIX}*"):
            try:
                if time.time() - tmp.stat().st_mtime > older_than_s:
                    shutil.rmtree(tmp, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def keys(self, stage: str) -> list[str]:
        """Keys present under a stage (not verified)."""
        if self.remote is not None:
            names = self._remote_call(stage, "*", lambda: self.remote.keys(check_name("stage", stage)))
            return sorted(n for n in names if _NAME_RE.fullmatch(n))
        folder = self.root / check_name("stage", stage)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if _NAME_RE.fullmatch(p.name) and p.is_dir())


def dump_json(path: Path, obj: Any) -> None:
    """Write canonical, human-readable JSON (a helper for stages that store small JSON files)."""
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str), encoding="utf-8")
