"""What every stage task shares: its cache key, its Prefect options, and its return value.

A stage's cache key is sha256(stage name, stage version, canonical JSON of its parameters), where
the parameters are input digests (artifact references without their paths) and stage configs. It
is *not* Prefect's default policy (that includes the run id, so nothing is reused across runs) and
not a source hash (Prefect's TASK_SOURCE sees only the decorated function, not cku_core): a change
of behaviour is declared by bumping the stage's VERSION.

The same key names the stage's artifact folder, so a Prefect cache hit is only used when the
artifact is still on disk and verifies: otherwise the key function first drops Prefect's result
record for that key (a record without its artifact must never be served), so the task recomputes,
rewrites the artifact and records its result under the same key: the next identical run is Cached.
With an object-store artifact root the check costs one GET and one LIST (no download), and the
records live on the same object store (tasks/storage.py), where a stale one is deleted the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from cku_core.fingerprint import canonical_json
from cku_core.store import ArtifactRef, ArtifactStore, make_key

# Prefect options of every cached stage: JSON results (small manifests, readable on disk), persisted
# so that later runs and other processes can hit the cache.
CACHED_TASK_OPTIONS: dict[str, Any] = {"persist_result": True, "result_serializer": "json", "retries": 0}
# Tasks that use the accelerator carry this tag; `prefect concurrency-limit create gpu 1` then
# runs one of them at a time (see prefect.yaml).
GPU_TAG = "gpu"
# Parameters that say where or how a stage runs, not what it computes: left out of cache keys, so work
# done on a GPU worker is reused on a CPU one, and the checkpoint interval never invalidates a result.
RUNTIME_PARAMETERS = frozenset({"device", "checkpoint_every"})
# Stages whose failures can be transient (file system or hub I/O) retry them; deterministic failures
# (every CKUError: bad input, full disk, broken invariant) fail at once. See `transient_failure`.
RETRY_OPTIONS: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 5}


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry I/O and network errors, never a CKUError (a retry cannot fix it),
    except a hub download that failed (HubUnavailableError), which often succeeds the second time."""
    from cku_core.errors import CKUError
    from cku_core.models import HubUnavailableError

    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - unreadable: do not retry blindly
            return False
    if isinstance(exc, HubUnavailableError):
        return True
    if isinstance(exc, CKUError):
        return False
    return isinstance(exc, (OSError, ConnectionError, TimeoutError))


def key_view(value: Any) -> Any:
    """The part of a parameter that identifies content: models as JSON, refs without their path."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        if {"stage", "key", "ref", "computed_seconds"} <= set(value):  # a StageOutput: its artifact only
            return key_view(value["ref"])
        if {"stage", "key", "content_digest"} <= set(value):
            return {"stage": value["stage"], "key": value["key"], "content_digest": value["content_digest"]}
        return {str(k): key_view(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [key_view(v) for v in value]
    return value


ExtraInputs = Callable[[Mapping[str, Any]], dict[str, Any]]


def stage_key(stage: str, version: str, parameters: Mapping[str, Any], extra: ExtraInputs | None = None) -> str:
    """The content-addressed key of a stage run with these parameters.

    `extra` adds digests that are not parameters (e.g. the sha256 of the model file a spec names),
    so a changed input file changes the key even when the spec string does not.
    """
    inputs = extra(parameters) if extra is not None else {}
    relevant = {k: v for k, v in parameters.items() if k not in RUNTIME_PARAMETERS}
    return make_key(stage, version, key_view(inputs), key_view(relevant))


def cache_key_fn(stage: str, version: str, extra: ExtraInputs | None = None
                 ) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect `cache_key_fn` whose hits are only served while the artifact is on disk and intact."""

    def key_fn(context: Any, parameters: dict[str, Any]) -> str:
        return checked_prefect_key(context, stage, version, stage_key(stage, version, parameters, extra))

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


def checked_prefect_key(context: Any, stage: str, version: str, key: str) -> str:
    """The Prefect cache key of a stage key, after dropping a persisted record that must not be served.

    Prefect's result records live in the Prefect home, not beside the artifacts, so a record can
    outlive its artifact or point at other content (another artifact root, a recomputation)."""
    prefect_key = f"cku-{stage}-v{version}-{key}"
    store = ArtifactStore()
    if store.remote is not None:
        intact, digest = store.check(stage, key), None
    else:
        artifact = store.get(stage, key)  # what `check` does locally, keeping the manifest
        intact, digest = artifact is not None, artifact.manifest.content_digest() if artifact else None
    # A record that points at other content (the artifact was recomputed by another run after a
    # crash, or lives under another artifact root) would hand downstream stages a reference they
    # refuse: drop it too.
    if not intact or (digest is not None and _recorded_digest(context, prefect_key) not in (None, digest)):
        drop_result_record(context, prefect_key)
    return prefect_key


def _recorded_digest(context: Any, prefect_key: str) -> str | None:
    """The content digest of the artifact a persisted result record refers to (None: no record)."""
    from prefect.results import get_result_store

    store = getattr(context, "result_store", None) or get_result_store()
    try:
        value = store.read(prefect_key).result
    except Exception:  # noqa: BLE001 - no record (or an unreadable one): nothing to compare
        return None
    ref = value.get("ref") if isinstance(value, dict) else None
    return ref.get("content_digest") if isinstance(ref, dict) else None


def drop_result_record(context: Any, prefect_key: str) -> None:
    """Delete Prefect's persisted result for `prefect_key`, so the lookup misses and the task runs.

    Prefect has no public delete for result records; `_resolve_path` is how its storage blocks map
    a key to a location (Prefect 3.x): a local file, or an object under a RemoteFileSystem's
    basepath. Both the result storage and, if a cache policy sets one, the metadata storage are
    cleaned, and the in-memory copy too.
    """
    from prefect.results import get_result_store

    store = getattr(context, "result_store", None) or get_result_store()
    for storage in (getattr(store, "result_storage", None), getattr(store, "metadata_storage", None)):
        location = _delete_record(storage, prefect_key)
        if location is not None:
            store.cache.pop(location, None)
    store.cache.pop(prefect_key, None)


def _delete_record(storage: Any, prefect_key: str) -> str | None:
    """Remove one record from a LocalFileSystem or RemoteFileSystem block; its location, or None."""
    import os

    resolve = getattr(storage, "_resolve_path", None)
    if resolve is None:
        return None  # no storage, or a kind this function does not know: nothing to delete
    try:
        location = str(resolve(prefect_key))
    except Exception:  # noqa: BLE001 - a key the storage refuses cannot have a record there
        return None
    if os.path.isabs(location):
        from pathlib import Path

        Path(location).unlink(missing_ok=True)
    elif (fs := getattr(storage, "filesystem", None)) is not None and "://" in location:
        try:
            fs.rm_file(location)
        except FileNotFoundError:
            pass
    return location


class StageOutput(BaseModel):
    """What a stage task returns (JSON): a reference to its artifact plus small facts about it."""

    stage: str
    version: str
    key: str
    ref: ArtifactRef
    computed_seconds: float
    reused: bool = False  # the artifact was already in the store (written by an earlier or parallel run)
    info: dict[str, Any] = {}


def output(stage: str, artifact_ref: ArtifactRef, seconds: float, info: dict[str, Any] | None = None, *,
           version: str, reused: bool = False) -> dict[str, Any]:
    """The JSON-safe return value of a stage (dicts survive Prefect's JSON result serializer)."""
    out = StageOutput(stage=stage, version=version, key=artifact_ref.key, ref=artifact_ref,
                      computed_seconds=round(seconds, 3), reused=reused, info=info or {})
    return _jsonable(out.model_dump(mode="json"))


def _jsonable(value: Any) -> Any:
    # canonical_json stringifies what JSON cannot hold, so the result is always serializable.
    import json

    return json.loads(canonical_json(value))


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
