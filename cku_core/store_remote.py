"""The artifact store's protocol on an object store (`CKU_ARTIFACT_ROOT=s3://bucket/prefix`).

Layout under the root URL:

    <stage>/<key>/manifest.json                     the artifact's manifest (same format as local)
    <stage>/<key>/files-<content digest>/<files>    its files
    .quarantine/<stage>/<key>-<time>-<id>/...        artifacts that failed verification

Why the files sit in a folder named after the manifest's content digest: an object store has no
rename, so a writer cannot build the artifact aside and move it into place. Instead every writer
uploads its files under a prefix that only byte-identical content shares, then writes the manifest
LAST; the manifest's existence means the artifact is complete, and whichever manifest is there
always names a complete set of files. Two writers of different bytes (non-deterministic GPU kernels,
say) never overwrite each other's files.

The manifest is written with a conditional put (`If-None-Match: *`, S3 and moto support it): the
first writer wins, later writers find its manifest, check it, use it, and delete their own files if
they differ. Without conditional puts the last manifest wins, which is just as consistent.

Reads: `check` costs one GET (the manifest) and one LIST (names and sizes of the files). `fetch`
also downloads the files into the store's local cache folder (`CKU_CACHE_DIR`), verifying every
sha256 against the manifest; a cached copy whose content digest equals the manifest's is reused
without downloading. A manifest that cannot be read, a missing file, a wrong size or a wrong digest
moves the whole `<stage>/<key>/` prefix to `.quarantine/` (copy, then delete the manifest first) and
reports a miss, so the caller recomputes it. A prefix without a manifest is an upload in progress
(or a crashed one): it is a miss and is left alone.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from cku_core.remote import RemoteRoot, RemoteStorageError
from cku_core.store import MANIFEST, QUARANTINE, Manifest, StoreError, sha256_file

log = logging.getLogger("cku.store")

PAYLOAD_PREFIX = "files-"
_PUBLISH_ATTEMPTS = 3


class RemoteArtifacts:
    """Manifest-last uploads, verified downloads and quarantine of one remote artifact root."""

    def __init__(self, root: RemoteRoot) -> None:
        self.root = root

    # ------------------------------------------------------------ naming
    @staticmethod
    def manifest_rel(stage: str, key: str) -> str:
        return f"{stage}/{key}/{MANIFEST}"

    @staticmethod
    def payload_rel(stage: str, key: str, manifest: Manifest) -> str:
        return f"{stage}/{key}/{PAYLOAD_PREFIX}{manifest.content_digest()}"

    # ------------------------------------------------------------ reading
    def check(self, stage: str, key: str) -> Manifest | None:
        """The manifest if the artifact is complete (every file present with its size), else None."""
        raw = self.root.read_bytes(self.manifest_rel(stage, key))
        if raw is None:
            return None  # absent, or an upload still in progress: never quarantine those
        manifest = _parse(raw, stage, key)
        if isinstance(manifest, str):
            self.quarantine(stage, key, manifest, raw)
            return None
        stored = self.root.listing(self.payload_rel(stage, key, manifest))
        expected = {name: entry.size for name, entry in manifest.files.items()}
        if stored != expected:
            missing = sorted(set(expected) - set(stored))
            wrong = sorted(n for n in set(expected) & set(stored) if stored[n] != expected[n])
            self.quarantine(stage, key, f"objects missing {missing} or of the wrong size {wrong}", raw)
            return None
        return manifest

    def download(self, stage: str, key: str, manifest: Manifest, folder: Path) -> bool:
        """Download every file into `folder` and verify it; False (and quarantined) on a digest mismatch."""
        payload = self.payload_rel(stage, key, manifest)
        for name, entry in manifest.files.items():
            target = folder / name
            self.root.download(f"{payload}/{name}", target)
            if sha256_file(target) != (entry.sha256, entry.size):
                raw = self.root.read_bytes(self.manifest_rel(stage, key))
                if raw is not None:
                    self.quarantine(stage, key, f"{name} does not match its manifest digest", raw)
                return False
        (folder / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        return True

    def keys(self, stage: str) -> list[str]:
        return self.root.children(stage)

    # ------------------------------------------------------------ writing
    def publish(self, staged: Path, stage: str, key: str, manifest: Manifest) -> Manifest:
        """Upload a staged artifact (files, then the manifest); returns the manifest that won."""
        manifest_bytes = (staged / MANIFEST).read_bytes()
        for _attempt in range(_PUBLISH_ATTEMPTS):
            self._upload_files(staged, stage, key, manifest)
            if self.root.put_bytes(self.manifest_rel(stage, key), manifest_bytes, exclusive=True):
                return manifest
            theirs = self.check(stage, key)  # quarantines it (and our files with it) when broken
            if theirs is not None:
                if theirs.content_digest() != manifest.content_digest():
                    self._remove_files(stage, key, manifest)  # ours would only be an orphan
                log.info("artifact %s/%s was published by another writer first; using theirs", stage, key)
                return theirs
        raise StoreError(f"could not publish artifact {stage}/{key} under {self.root.url}: "
                         "its manifest keeps reappearing corrupt")

    def _upload_files(self, staged: Path, stage: str, key: str, manifest: Manifest) -> None:
        payload = self.payload_rel(stage, key, manifest)
        for name in manifest.files:
            self.root.upload(staged / name, f"{payload}/{name}")
        # The manifest must never vouch for an upload the store did not complete.
        stored = self.root.listing(payload)
        expected = {name: entry.size for name, entry in manifest.files.items()}
        if stored != expected:
            raise StoreError(f"upload of artifact {stage}/{key} to {self.root.url} is incomplete "
                             f"(stored {len(stored)} of {len(expected)} files with the right size); rerun the stage")

    def _remove_files(self, stage: str, key: str, manifest: Manifest) -> None:
        payload = self.payload_rel(stage, key, manifest)
        self.root.remove([f"{payload}/{name}" for name in manifest.files])

    def discard(self, stage: str, key: str) -> bool:
        """Delete an artifact, manifest first (readers then see it as absent); False if it had none."""
        objects = self.root.listing(f"{stage}/{key}")
        self.root.remove([f"{stage}/{key}/{MANIFEST}"])
        self.root.remove([f"{stage}/{key}/{rel}" for rel in objects if rel != MANIFEST])
        return MANIFEST in objects

    # ------------------------------------------------------------ quarantine
    def quarantine(self, stage: str, key: str, why: str, seen_manifest: bytes) -> None:
        """Move `<stage>/<key>/` under `.quarantine/` (copy, delete manifest, delete the rest).

        Only when the manifest is still the one that failed: another writer may have published a
        good artifact meanwhile, and that one must stay. A failure to move is only logged.
        """
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = f"{QUARANTINE}/{stage}/{key}-{stamp}-{uuid.uuid4().hex[:8]}"
        try:
            if self.root.read_bytes(self.manifest_rel(stage, key)) != seen_manifest:
                return
            objects = sorted(self.root.listing(f"{stage}/{key}"), key=lambda rel: rel != MANIFEST)
            for rel in objects:
                self.root.copy(f"{stage}/{key}/{rel}", f"{target}/{rel}")
            self.root.remove([f"{stage}/{key}/{rel}" for rel in objects])  # manifest first
        except (StoreError, RemoteStorageError) as exc:
            log.warning("artifact %s/%s is corrupt (%s) and could not be quarantined (%s); treating it as missing",
                        stage, key, why, exc)
            return
        log.warning("artifact %s/%s is corrupt (%s); moved to %s, it will be recomputed",
                    stage, key, why, self.root.url_of(target))

    def quarantined(self, stage: str) -> list[str]:
        """Names of the quarantined copies of a stage's artifacts (for tests and post-mortems)."""
        return self.root.children(f"{QUARANTINE}/{stage}")


def _parse(raw: bytes, stage: str, key: str) -> Manifest | str:
    try:
        manifest = Manifest.model_validate_json(raw)
    except (ValidationError, ValueError) as exc:
        return f"unreadable manifest ({type(exc).__name__})"
    if (manifest.stage, manifest.key) != (stage, key):
        return f"manifest names {manifest.stage}/{manifest.key}"
    return manifest
