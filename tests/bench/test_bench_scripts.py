"""Smoke checks of the benchmark scripts (bench/): each runs in its tiny mode and writes its figures.

They check that the scripts still run against the library, not the figures (tiny models on a shared
CI machine say nothing about speed). Results go to a temporary folder ($CKU_BENCH_RESULTS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_script(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CKU_BENCH_RESULTS=str(tmp_path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_generation_tiny(tmp_path: Path) -> None:
    run_script(tmp_path, "bench/generation.py", "--tiny", "--n-prompts", "4", "--max-new-tokens", "4",
               "--rounds", "1", "--batch-sizes", "1", "4", "--threads", "1")
    out = json.loads((tmp_path / "generation_tiny.json").read_text())
    assert set(out["tokens_per_s"]) == {"1", "4"} and out["tokens_per_s"]["4"] > 0
    assert out["greedy_agreement_with_batch_1"]["1"] == 1.0
    assert out["target"]["verdict"] in ("pass", "MISS")
    assert out["machine"]["cpus"] and out["machine"]["torch"]


def test_gpu_step_tiny_on_cpu(tmp_path: Path) -> None:
    target = tmp_path / "gpu_step_tiny.json"
    run_script(tmp_path, "bench/gpu_step.py", "--tiny", "--steps", "1", "--out", str(target))
    out = json.loads(target.read_text())
    assert set(out["step_s"]) == {"cku_masked", "cku_unmasked", "reference_loop"}
    assert out["flops"]["executed_flops_per_step"] < out["flops"]["model_flops_per_step"]
    assert out["generation"]["as_cku_calls_it/batch1"]["tokens"] > 0


@pytest.mark.slow
def test_caching_smoke(tmp_path: Path) -> None:
    run_script(tmp_path, "bench/caching.py", "--smoke", "--threads", "1", timeout=600)
    out = json.loads((tmp_path / "caching_smoke.json").read_text())
    assert out["pipeline"]["warm_s"] < out["pipeline"]["cold_s"]
    assert out["sweep"]["computed"]["scores"] == 1
    assert out["sweep"]["computed"]["checkpoint"] == out["sweep"]["K"] == 2


@pytest.mark.slow
def test_scale_out_smoke(tmp_path: Path) -> None:
    run_script(tmp_path, "bench/scale_out.py", "--smoke", timeout=600)
    out = json.loads((tmp_path / "scale_out_smoke.json").read_text())
    assert out["identical_headlines"] is True and out["speedup"] > 0
    assert len(out["runs"]["dask"][0]["workers"]) == 2 and len(out["runs"]["sequential"][0]["workers"]) == 1


def test_align_recipe_tiny(tmp_path: Path) -> None:
    run_script(tmp_path, "bench/align_recipe.py", "--tiny", "--steps", "2", "--eval-at", "1", "--n-prompts", "2",
               "--attacks", "direct,prefill_sure")
    rows = [json.loads(line) for line in (tmp_path / "align_recipe_tiny.jsonl").read_text().splitlines()]
    assert [r["recipe"]["steps"] for r in rows] == [1, 2]  # one fine-tune, measured after each step count
    assert all({"asr_direct", "asr_prefill_sure", "perplexity", "over_refusal"} <= set(r) for r in rows)
