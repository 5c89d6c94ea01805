"""Prefect's result storage on the same object store as the artifacts, so cache hits cross machines.

Prefect looks a cached task up by its cache key in the *result storage* of the process that runs
it. Left at its default ($PREFECT_HOME/storage), a second worker with its own home never sees the
first worker's records and recomputes everything. With an object-store artifact root, cku therefore
saves a `RemoteFileSystem` block whose basepath is `$CKU_PREFECT_RESULTS_ROOT` (default
`<artifact root>/.prefect-results`) and makes it Prefect's default result storage for the run
(`PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`). Every worker pointed at the same URL then reads the same
records, whether it talks to the same Prefect server or to its own.

Prefect requires result storage blocks to be saved on the API server (an unsaved block is refused);
the block's name is derived from the URL and options, so several roots can share one server.
A user's own `PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK` is respected and left alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cku_core.remote import is_remote, storage_options
from cku_core.store import ROOT_ENV as ARTIFACT_ROOT_ENV

log = logging.getLogger("cku.storage")

PREFECT_RESULTS_ENV = "CKU_PREFECT_RESULTS_ROOT"
DEFAULT_SUBDIR = ".prefect-results"  # a hidden name: never a stage folder of the artifact root
BLOCK_PREFIX = "cku-results"


def prefect_results_url() -> str | None:
    """Where Prefect's task results go: $CKU_PREFECT_RESULTS_ROOT, else beside remote artifacts, else None."""
    explicit = os.environ.get(PREFECT_RESULTS_ENV, "").strip()
    if explicit:
        return explicit.rstrip("/")
    artifacts = os.environ.get(ARTIFACT_ROOT_ENV, "").strip()
    if is_remote(artifacts):
        return f"{artifacts.rstrip('/')}/{DEFAULT_SUBDIR}"
    return None


def block_name(url: str, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps([url, settings], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{BLOCK_PREFIX}-{digest}"


def register_result_storage(url: str) -> str:
    """Save (once per URL and options) the RemoteFileSystem block for `url`; returns its slug."""
    from prefect.filesystems import RemoteFileSystem

    settings = storage_options(url) if is_remote(url) else {}
    name = block_name(url, settings)
    try:
        existing = RemoteFileSystem.load(name)
        if existing.basepath == url and existing.settings == settings:
            return f"remote-file-system/{name}"
    except ValueError:  # not saved on this server yet
        pass
    RemoteFileSystem(basepath=url, settings=settings).save(name, overwrite=True)
    return f"remote-file-system/{name}"


@contextmanager
def shared_result_storage() -> Iterator[str | None]:
    """Run the enclosed flow with Prefect results on the object store (a no-op for local roots).

    Yields the block slug in use, or None when results stay in Prefect's local storage.
    """
    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, get_current_settings, temporary_settings

    configured = get_current_settings().results.default_storage_block
    url = prefect_results_url()
    if url is None or configured:
        if url is not None:
            log.info("keeping the configured Prefect result storage %s", configured)
        yield configured
        return
    slug = register_result_storage(url)
    with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: slug}):
        yield slug
