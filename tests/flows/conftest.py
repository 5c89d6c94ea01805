"""Fixtures of the in-process flow tests: one artifact/results root per test module."""

from __future__ import annotations

from pathlib import Path

import pytest

from cku_core.results import ResultsStore
from cku_core.store import ArtifactStore


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    return base / "artifacts", base / "results"


@pytest.fixture
def env(roots: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[ArtifactStore, ResultsStore]:
    """One artifact/results root shared by the tests of a module (they build on each other's cache)."""
    monkeypatch.setenv("CKU_ARTIFACT_ROOT", str(roots[0]))
    monkeypatch.setenv("CKU_RESULTS_ROOT", str(roots[1]))
    return ArtifactStore(roots[0]), ResultsStore(roots[1])
