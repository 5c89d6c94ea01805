"""Caching pays (issue 7, target 5): warm re-run vs cold run, and what a K = 5 NLR sweep recomputes.

    python bench/caching.py                        # preset tiny: pipeline cold/warm x3, then the sweep (minutes)
    python bench/caching.py --preset smollm2 --repeats 1 --no-sweep    # the real pipeline (cold ~10+ min)
    python bench/caching.py --smoke                # one tiny cold/warm pair and a K=2 sweep (smoke check)

Everything runs in this process against one temporary Prefect API (`prefect_test_harness`, its
start-up excluded from every figure), with PREFECT_HOME, Prefect's result storage and cku's
artifact and results roots in fresh temporary folders, so the checkout's `artifacts/` and
`results/` are never touched and nothing is cached from before.

Pipeline: `flows.pipeline.cku_pipeline` with the preset's parameters (keys the flow does not take,
e.g. `methods`, are dropped), once cold in empty roots, then warm (same parameters, same roots).
Each repeat uses new empty roots; cold and warm alternate, so drift hits both.
Target: warm wall time <= 5% of cold.

Sweep: `flows.sweep.cku_sweep` with nlrs [0, 0.2, 0.5, 0.8, 0.95] and one objective (hinge_ga), in
new empty roots. From each point's `cached` dict and the `stages` table of the results store: how
many `scores` and `checkpoint` (unlearning) stages were computed vs reused, and the sweep's wall
time next to (1 scoring + K unlearning stage times). Targets: exactly 1 scoring pass and K
unlearning runs computed; scoring+unlearning seconds of the sweep <= 1.1 x (S + K.U), S and U being
the scoring and unlearning stage times of a single cold pipeline run of the same preset.
Writes bench/results/caching_<preset>.json (caching_smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported: stage logs off

from _common import median, verdict, write_results  # noqa: E402

NLRS = [0.0, 0.2, 0.5, 0.8, 0.95]
WARM_TARGET = 0.05
PIPELINE_KEYS = ("model", "data", "scoring", "mask", "unlearn", "evaluation", "method", "band", "options")
SWEEP_KEYS = ("model", "data", "scoring", "unlearn", "evaluation", "options")


@contextlib.contextmanager
def prefect_api(base: Path) -> Iterator[None]:
    """A temporary in-process Prefect API with its home and result storage under `base`."""
    os.environ.update({"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    os.environ.pop("PREFECT_API_URL", None)  # never write into a server someone else is watching
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    settings = {PREFECT_HOME: base / "prefect-home", PREFECT_RESULTS_LOCAL_STORAGE_PATH: base / "prefect-storage",
                PREFECT_SERVER_ANALYTICS_ENABLED: False}
    with temporary_settings(settings), prefect_test_harness(server_startup_timeout=180):
        yield


def fresh_roots(base: Path, name: str) -> Path:
    """New empty cku artifact and results roots (through the environment, as the CLI sets them)."""
    root = base / name
    root.mkdir(parents=True)
    os.environ["CKU_ARTIFACT_ROOT"] = str(root / "artifacts")
    os.environ["CKU_RESULTS_ROOT"] = str(root / "results")
    return root


def stage_rows(run_ids: list[str]) -> list[dict[str, Any]]:
    """The `stages` rows of these runs (the current results root)."""
    from cku_core.results import ResultsStore

    marks = ", ".join("?" for _ in run_ids)
    cols, rows = ResultsStore().query(
        f"SELECT run_id, stage, cached, seconds FROM stages WHERE run_id IN ({marks})", run_ids)
    return [dict(zip(cols, r)) for r in rows]


def timed(fn, **params) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(**params)
    return time.perf_counter() - t0, out


def preset_params(name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    from flows.presets import preset

    return {k: v for k, v in preset(name).items() if k in keys}


def run_pipeline(preset: str, repeats: int, base: Path) -> dict[str, Any]:
    from flows.pipeline import cku_pipeline

    params = preset_params(preset, PIPELINE_KEYS)
    cold, warm, stages_cold, stages_warm = [], [], [], []
    for r in range(repeats):
        fresh_roots(base, f"pipeline-{r}")
        t_cold, out_cold = timed(cku_pipeline, **params)
        t_warm, out_warm = timed(cku_pipeline, **params)
        not_cached = [s for s, c in out_warm["cached"].items() if not c]
        cold.append(t_cold)
        warm.append(t_warm)
        stages_cold.append({row["stage"]: row["seconds"] for row in stage_rows([out_cold["run_id"]])})
        stages_warm.append({row["stage"]: row["seconds"] for row in stage_rows([out_warm["run_id"]])})
        print(f"[pipeline {preset}] repeat {r + 1}/{repeats}: cold {t_cold:.1f} s, warm {t_warm:.2f} s "
              f"({t_warm / t_cold:.1%}); warm stages not cached: {not_cached or 'none'}", flush=True)
    ratio = median([w / c for w, c in zip(warm, cold)])
    stage_names = list(stages_cold[0])
    return {
        "preset": preset, "repeats": repeats,
        "cold_s": median(cold), "warm_s": median(warm), "cold_s_runs": cold, "warm_s_runs": warm,
        "warm_over_cold": ratio,
        "cold_stage_s": {s: median([st.get(s, 0.0) for st in stages_cold]) for s in stage_names},
        "warm_stage_s": {s: median([st.get(s, 0.0) for st in stages_warm]) for s in stage_names},
        "warm_flow_overhead_s": median(warm) - median([sum(st.values()) for st in stages_warm]),
        "target": {"name": f"warm <= {WARM_TARGET:.0%} of cold", "value": ratio, "verdict": verdict(ratio, WARM_TARGET)},
    }


def run_sweep(preset: str, nlrs: list[float], base: Path, reference: dict[str, Any] | None) -> dict[str, Any]:
    from flows.pipeline import cku_pipeline
    from flows.sweep import cku_sweep

    if reference is None:  # the S and U of one cold pipeline of this preset
        fresh_roots(base, "sweep-reference")
        t, out = timed(cku_pipeline, **preset_params(preset, PIPELINE_KEYS))
        reference = {row["stage"]: row["seconds"] for row in stage_rows([out["run_id"]])}
        print(f"[sweep {preset}] reference cold pipeline: {t:.1f} s", flush=True)
    s_ref, u_ref = reference["scores"], reference["checkpoint"]

    fresh_roots(base, "sweep")
    params = preset_params(preset, SWEEP_KEYS)
    wall, out = timed(cku_sweep, **params, nlrs=nlrs, bands=[None], objectives=["hinge_ga"])
    k = len(out["points"])
    computed: dict[str, int] = defaultdict(int)
    reused: dict[str, int] = defaultdict(int)
    for p in out["points"]:
        for stage, cached in p["cached"].items():
            (reused if cached else computed)[stage] += 1
    rows = stage_rows([p["run_id"] for p in out["points"]])
    seconds: dict[str, float] = defaultdict(float)
    computed_s: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        seconds[row["stage"]] += row["seconds"]
        if not row["cached"]:
            computed_s[row["stage"]].append(row["seconds"])
    score_unlearn_s = seconds["scores"] + seconds["checkpoint"]
    budget = s_ref + k * u_ref
    # The ideal sweep without any redundant work: the shared prefix once, the per-point stages K times.
    prefix = sum(sum(computed_s[s]) for s in ("model", "data", "reference", "examples", "scores"))
    per_point = sum(sum(computed_s[s]) for s in ("mask", "checkpoint", "evaluation"))
    counts_ok = computed["scores"] == 1 and computed["checkpoint"] == k
    time_ratio = score_unlearn_s / budget
    print(f"[sweep {preset}] K={k}: wall {wall:.1f} s; computed {dict(computed)}; reused {dict(reused)}", flush=True)
    return {
        "preset": preset, "nlrs": nlrs, "objectives": ["hinge_ga"], "K": k, "wall_s": wall,
        "computed": dict(computed), "reused": dict(reused),
        "stage_seconds_total": dict(seconds),
        "reference_single_run": {"S_scores_s": s_ref, "U_unlearn_s": u_ref},
        "scoring_plus_unlearning_s": score_unlearn_s,
        "one_scoring_plus_K_unlearning_s": budget,
        "scoring_plus_unlearning_over_budget": score_unlearn_s / budget,
        "wall_over_one_scoring_plus_K_unlearning": wall / budget,
        "ideal_wall_s (prefix once + K x (mask+unlearn+evaluation))": prefix + per_point,
        "wall_over_ideal": wall / (prefix + per_point) if prefix + per_point else float("nan"),
        "evaluation_s_total": seconds["evaluation"],
        "target_counts": {"name": "exactly 1 scoring pass and K unlearning runs computed",
                          "value": f"scores computed {computed['scores']}, unlearning computed "
                                   f"{computed['checkpoint']} of K={k}",
                          "verdict": "pass" if counts_ok else "MISS"},
        "target_time": {"name": "scoring + unlearning seconds of the sweep <= 1.1 x (S + K.U)",
                        "value": time_ratio, "verdict": verdict(time_ratio, 1.1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="preset of the pipeline cold/warm runs (tiny or smollm2)")
    parser.add_argument("--sweep-preset", default="tiny",
                        help="preset of the sweep (default tiny: a K=5 sweep on smollm2 takes hours on 2 cores)")
    parser.add_argument("--repeats", type=int, default=None, help="cold/warm pairs (default 3 for tiny, 1 otherwise)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the cold/warm pipeline runs")
    parser.add_argument("--no-sweep", action="store_true", help="skip the NLR sweep")
    parser.add_argument("--smoke", action="store_true", help="tiny only, 1 cold/warm pair, K=2 sweep")
    parser.add_argument("--keep", action="store_true", help="keep the temporary roots (their path is printed)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    if args.smoke:
        args.preset, args.sweep_preset, args.repeats = "tiny", "tiny", 1
    repeats = args.repeats or (3 if args.preset == "tiny" else 1)
    nlrs = [0.0, 0.8] if args.smoke else NLRS

    import torch

    torch.set_num_threads(args.threads)
    base = Path(tempfile.mkdtemp(prefix="cku-bench-caching-"))
    print(f"temporary roots under {base}", flush=True)
    figures: dict[str, Any] = {}
    try:
        with prefect_api(base):
            if not args.no_pipeline:
                figures["pipeline"] = run_pipeline(args.preset, repeats, base)
            if not args.no_sweep:
                same = "pipeline" in figures and args.sweep_preset == args.preset
                reference = figures["pipeline"]["cold_stage_s"] if same else None
                figures["sweep"] = run_sweep(args.sweep_preset, nlrs, base, reference)
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    print()
    if "pipeline" in figures:
        p = figures["pipeline"]
        print(f"pipeline ({p['preset']}, median of {p['repeats']}): cold {p['cold_s']:.1f} s, warm {p['warm_s']:.2f} s "
              f"= {p['warm_over_cold']:.1%} of cold (target <= {WARM_TARGET:.0%}) -> {p['target']['verdict']}")
        print("  cold stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in p["cold_stage_s"].items()))
        print(f"  warm: stages {sum(p['warm_stage_s'].values()):.2f} s + flow/record overhead "
              f"{p['warm_flow_overhead_s']:.2f} s")
    if "sweep" in figures:
        s = figures["sweep"]
        print(f"sweep ({s['preset']}, K={s['K']}): scoring computed {s['computed'].get('scores', 0)} / "
              f"reused {s['reused'].get('scores', 0)}; unlearning computed {s['computed'].get('checkpoint', 0)} / "
              f"reused {s['reused'].get('checkpoint', 0)}")
        print(f"  scoring+unlearning {s['scoring_plus_unlearning_s']:.1f} s vs 1 scoring + K unlearning "
              f"{s['one_scoring_plus_K_unlearning_s']:.1f} s ({s['scoring_plus_unlearning_over_budget']:.2f}x) "
              f"-> {s['target_time']['verdict']} (counts: {s['target_counts']['verdict']})")
        print(f"  sweep wall {s['wall_s']:.1f} s = {s['wall_over_one_scoring_plus_K_unlearning']:.2f}x (1 scoring + "
              f"K unlearning); {s['wall_over_ideal']:.2f}x the ideal (shared prefix once + K x mask/unlearn/evaluate); "
              f"evaluation {s['evaluation_s_total']:.1f} s in all")
    name = "caching_smoke" if args.smoke else f"caching_{args.preset}"
    write_results(name, figures)


if __name__ == "__main__":
    main()
