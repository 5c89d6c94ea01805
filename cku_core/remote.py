"""Object-store roots (s3://..., any fsspec URL): settings, a thin file API, and one-line errors.

The artifact store and the results store accept a URL wherever they accept a folder. This module
is everything they share about such a root; it imports fsspec (and through it s3fs) only when a
root is remote, so local use and `cku query` on a local root never pay for it.

Settings (read when a store is created):
- the root itself: `CKU_ARTIFACT_ROOT` / `CKU_RESULTS_ROOT` (or `--artifact-root` / `--results-root`)
- credentials and region: the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
  `AWS_SESSION_TOKEN`, `AWS_PROFILE`, `AWS_DEFAULT_REGION`, ~/.aws/...), read by s3fs/botocore
- the endpoint of an S3-compatible server (MinIO, Ceph, moto): `CKU_S3_ENDPOINT_URL`, or botocore's
  own `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`
- anything else fsspec takes for that protocol: `CKU_STORAGE_OPTIONS`, a JSON object
- where remote artifacts are downloaded to: `CKU_CACHE_DIR` (default `$XDG_CACHE_HOME/cku` or
  `~/.cache/cku`); models and checkpoints must be local files for transformers and safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cku_core.errors import CKUError

ENDPOINT_ENV = "CKU_S3_ENDPOINT_URL"
OPTIONS_ENV = "CKU_STORAGE_OPTIONS"
CACHE_ENV = "CKU_CACHE_DIR"
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.+)$")
# Preflight probes must fail fast on a wrong endpoint: botocore's default retries take 4-9 s.
_PROBE_CONFIG = {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 2, "mode": "standard"}}

T = TypeVar("T")


class RemoteStorageError(CKUError):
    """An object-store root that cannot be used (no such bucket, unreachable endpoint, no permission...)."""


def is_remote(root: str | os.PathLike[str] | None) -> bool:
    """True for a URL with a scheme other than file:// (s3://bucket/prefix, gs://..., memory://...)."""
    if root is None or isinstance(root, os.PathLike):
        return False
    match = _URL_RE.match(str(root))
    return bool(match) and match.group(1).lower() != "file"


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for `url`: CKU_STORAGE_OPTIONS (JSON), plus CKU_S3_ENDPOINT_URL for s3 URLs."""
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    try:
        options = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise RemoteStorageError(f"{OPTIONS_ENV} is not valid JSON ({exc.msg} at char {exc.pos}); "
                                 'give an object such as {"anon": false}') from None
    if not isinstance(options, dict):
        raise RemoteStorageError(f"{OPTIONS_ENV} must be a JSON object of fsspec options, not {type(options).__name__}")
    endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
    if endpoint and url.lower().startswith(("s3://", "s3a://")):
        options.setdefault("endpoint_url", endpoint)
    # Listings must be fresh: another worker may have published an artifact or a results part since.
    options.setdefault("use_listings_cache", False)
    return options


def cache_root(kind: str, url: str) -> Path:
    """Local folder for downloads from one remote root: `<CKU_CACHE_DIR>/<kind>/<host-prefix>-<hash>`."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "cku")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[-1])[:48].strip("-.") or "root"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return Path(base).expanduser().absolute() / kind / f"{readable}-{digest}"


@dataclass(frozen=True)
class RemoteRoot:
    """A root URL, its fsspec file system, and file operations on paths relative to it.

    Every method turns a storage failure into a RemoteStorageError whose message names the root,
    the problem and the fix, except `read_bytes`/`listing`, which report an absent object as None/{}.
    """

    url: str            # normalized, no trailing '/'
    fs: Any             # fsspec.AbstractFileSystem
    path: str           # the root as the file system names it (s3: 'bucket/prefix')
    env_hint: str       # what to change to pick another root, for messages

    @classmethod
    def open(cls, url: str, env_hint: str, **extra: Any) -> "RemoteRoot":
        from fsspec.core import url_to_fs

        url = url.rstrip("/")
        try:
            fs, path = url_to_fs(url, **{**storage_options(url), **extra})
        except (ImportError, ValueError) as exc:
            raise RemoteStorageError(f"cannot use {url}: {_first_line(exc)}; use an s3:// URL (s3fs is installed) "
                                     f"or a local folder in {env_hint}") from None
        return cls(url=url, fs=fs, path=path.rstrip("/"), env_hint=env_hint)

    # ------------------------------------------------------------ naming
    def full(self, rel: str) -> str:
        return f"{self.path}/{rel}" if rel else self.path

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    @property
    def endpoint(self) -> str:
        opts = getattr(self.fs, "storage_options", {}) or {}
        return (opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url")
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint")

    # ------------------------------------------------------------ operations
    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one storage operation; failures become a one-line RemoteStorageError."""
        try:
            return fn()
        except RemoteStorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore/aiohttp errors are not OSErrors
            if not is_storage_exception(exc):
                raise
            raise RemoteStorageError(self.describe(exc, what)) from exc

    def read_bytes(self, rel: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        def read() -> bytes | None:
            try:
                return self.fs.cat_file(self.full(rel))
            except FileNotFoundError as exc:
                if _missing_bucket(exc):
                    raise
                return None
        return self.call(f"read {self.url_of(rel)}", read)

    def listing(self, rel: str) -> dict[str, int]:
        """{path relative to `rel`: size} of every object under `rel` ({} when there is none)."""
        def find() -> dict[str, Any]:
            try:
                return self.fs.find(self.full(rel), detail=True)
            except FileNotFoundError as exc:
                if _missing_bucket(exc):
                    raise
                return {}
        prefix = self.full(rel).rstrip("/") + "/"
        found = self.call(f"list {self.url_of(rel)}", find)
        return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
                if name.startswith(prefix) and info.get("type", "file") != "directory"}

    def children(self, rel: str) -> list[str]:
        """Names directly under `rel` (files and 'folders')."""
        def ls() -> list[str]:
            try:
                return self.fs.ls(self.full(rel), detail=False)
            except FileNotFoundError as exc:
                if _missing_bucket(exc):
                    raise
                return []
        return sorted({name.rstrip("/").rsplit("/", 1)[-1] for name in self.call(f"list {self.url_of(rel)}", ls)})

    def upload(self, local: Path, rel: str) -> None:
        self.call(f"upload {local.name} to {self.url_of(rel)}", lambda: self.fs.put_file(str(local), self.full(rel)))

    def download(self, rel: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.call(f"download {self.url_of(rel)}", lambda: self.fs.get_file(self.full(rel), str(local)))

    def put_bytes(self, rel: str, data: bytes, *, exclusive: bool = False) -> bool:
        """Write one object; with `exclusive`, only if it does not exist yet (False when it did).

        Exclusive writes use S3's conditional put (If-None-Match: *) where the file system offers
        it; elsewhere an existence check followed by the write (a race can then overwrite).
        """
        target = self.full(rel)

        def put() -> bool:
            if not exclusive:
                self.fs.pipe_file(target, data)
                return True
            try:
                self.fs.pipe_file(target, data, mode="create")
                return True
            except FileExistsError:
                return False
            except (TypeError, NotImplementedError):  # a file system without exclusive create
                if self.fs.exists(target):
                    return False
                self.fs.pipe_file(target, data)
                return True
        return self.call(f"write {self.url_of(rel)}", put)

    def copy(self, src_rel: str, dst_rel: str) -> None:
        self.call(f"copy {self.url_of(src_rel)}", lambda: self.fs.copy(self.full(src_rel), self.full(dst_rel)))

    def remove(self, rels: list[str]) -> None:
        """Delete objects, in the given order; absent ones are fine."""
        for rel in rels:
            def rm(path: str = self.full(rel)) -> None:
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass
            self.call(f"delete {self.url_of(rel)}", rm)

    # ------------------------------------------------------------ messages
    def describe(self, exc: BaseException, what: str) -> str:
        """One line: the root, what failed, why, and what to change."""
        text = _first_line(exc)
        bucket = self.path.split("/", 1)[0]
        if _missing_bucket(exc):
            return (f"bucket {bucket!r} of {self.url} does not exist at {self.endpoint}; create it "
                    f"(e.g. `aws s3 mb s3://{bucket}`) or point {self.env_hint} at an existing bucket")
        if _unreachable(exc):
            return (f"cannot reach the object store at {self.endpoint} for {self.url} ({text}); start it or "
                    f"fix {ENDPOINT_ENV} / AWS_ENDPOINT_URL")
        if isinstance(exc, PermissionError) or "AccessDenied" in text or "credentials" in text.lower():
            return (f"no permission to {what} ({text}); check the AWS credentials (AWS_ACCESS_KEY_ID / "
                    f"AWS_PROFILE) or choose another root with {self.env_hint}")
        return f"cannot {what}: {text}; check {self.url} or choose another root with {self.env_hint}"


def is_storage_exception(exc: BaseException) -> bool:
    """OSErrors and the network errors of botocore/aiohttp (which are not OSErrors)."""
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    return any(cls.__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3")
               for cls in type(exc).__mro__)


def check_remote_root(url: str, what: str, env_hint: str, error: type[CKUError] = CKUError) -> None:
    """Preflight of a remote root: the bucket exists, the endpoint answers, and we may write and delete.

    Leaves nothing behind (the probe object is deleted); fails within seconds on a wrong endpoint.
    """
    try:
        root = RemoteRoot.open(url, env_hint, config_kwargs=json.loads(json.dumps(_PROBE_CONFIG)),
                               skip_instance_cache=True)
        probe = f".cku-write-probe-{uuid.uuid4().hex}"
        root.put_bytes(probe, b"")
        root.remove([probe])
    except RemoteStorageError as exc:
        raise error(f"{what}: {exc}") from None


def _missing_bucket(exc: BaseException) -> bool:
    text = str(exc)
    return "NoSuchBucket" in text or "bucket does not exist" in text.lower()


def _unreachable(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                         "ConnectionRefusedError", "ReadTimeoutError"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
