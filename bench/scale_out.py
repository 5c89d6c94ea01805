"""Sweep fan-out (issue 8): a 4-point NLR sweep on a local 2-worker Dask cluster vs the sequential sweep.

    python bench/scale_out.py                      # tiny preset, 40 unlearning steps per point, 1 repeat
    python bench/scale_out.py --steps 100 --repeats 2   # heavier points, two rounds
    python bench/scale_out.py --steps 400 --skip-default-threads   # heavy points, 1-thread control only
    python bench/scale_out.py --smoke              # 5 steps: checks the script, not the speed-up

Both modes run `flows.sweep.cku_sweep` in this process against one temporary Prefect API (its
start-up excluded), each in fresh empty artifact/results roots, so both pay the same shared prefix
(model, data, reference, examples, scores) and nothing is cached from before. Sequential twice: with
torch's default threads (every core, what a user gets) and with 1 thread (the control: on a loaded
machine 2 spinning OpenMP threads per step can cost more than they bring, and the Dask workers run 1
thread each, so only this comparison isolates the parallelism). Dask: `scale_out` = 2 worker
processes x 1 thread, torch 1 thread each; its wall time includes starting and stopping the local
cluster (a real sweep pays that too).

Each point must be heavy enough for the overhead (a Prefect subflow per point, a worker start) not to
dominate, hence the tiny preset with many unlearning steps. The load average is recorded: on a shared
machine other processes take cores, so read the ratio next to it. Writes bench/results/scale_out.json
(scale_out_steps<N>.json with other --steps, scale_out_smoke.json with --smoke).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # before Prefect is imported: stage logs off

from _common import median, write_results  # noqa: E402
from caching import fresh_roots, prefect_api, stage_rows  # noqa: E402

NLRS = [0.0, 0.5, 0.8, 0.95]
WORKERS = 2
DEFAULT_STEPS = 40
TIMING_METRICS = ("eval_seconds", "generation_seconds", "tokens_per_s")  # wall-clock: differ run to run


def quality(headline: dict[str, float]) -> dict[str, float]:
    """A point's headline metrics without the wall-clock ones (keys are 'metric|judge|attack')."""
    return {k: v for k, v in headline.items() if k.split("|", 1)[0] not in TIMING_METRICS}


def sweep_params(steps: int) -> dict[str, Any]:
    from flows.presets import PRESETS

    tiny = {k: v for k, v in PRESETS["tiny"].items() if k in ("model", "data", "scoring", "unlearn", "evaluation")}
    tiny["unlearn"] = {**tiny["unlearn"], "steps": steps}
    return {**tiny, "nlrs": NLRS, "bands": [None], "objectives": ["hinge_ga"]}


def run_sweep(base: Path, name: str, params: dict[str, Any], scale_out: dict[str, Any], threads: int
              ) -> dict[str, Any]:
    """One sweep in fresh roots (`threads`: torch threads of this process): wall time, per-point unlearning
    seconds, the workers that ran the points."""
    import torch

    from flows.sweep import cku_sweep

    fresh_roots(base, name)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    out = cku_sweep(**params, scale_out=scale_out)
    wall = time.perf_counter() - start
    unlearn_s = [r["seconds"] for r in stage_rows([p["run_id"] for p in out["points"]]) if r["stage"] == "checkpoint"]
    print(f"{name}: {wall:.1f} s, unlearning per point {[round(s, 1) for s in unlearn_s]}", flush=True)
    return {"wall_s": wall, "torch_threads_here": threads, "unlearn_stage_s": unlearn_s, "workers": sorted({p["worker"] for p in out["points"]}),
            "headlines": [quality(p["headline"]) for p in out["points"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="unlearning steps per point (the per-point work)")
    parser.add_argument("--repeats", type=int, default=1, help="sequential/dask pairs, alternating")
    parser.add_argument("--smoke", action="store_true", help="5 steps, 1 repeat: checks the script only")
    parser.add_argument("--skip-default-threads", action="store_true",
                        help="leave out the sequential run with torch's default threads (very slow on a loaded machine)")
    args = parser.parse_args()
    steps, repeats = (5, 1) if args.smoke else (args.steps, args.repeats)
    params = sweep_params(steps)
    dask = {"task_runner": "dask", "n_workers": WORKERS, "threads_per_worker": 1, "torch_threads": 1}
    import torch

    load_before = os.getloadavg()
    default_threads = torch.get_num_threads()
    variants = {"sequential": ({"task_runner": "sequential"}, default_threads),
                "sequential_1thread": ({"task_runner": "sequential"}, 1), "dask": (dask, default_threads)}
    if args.skip_default_threads:
        del variants["sequential"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="cku-bench-scale-out-") as tmp:
        base = Path(tmp)
        with prefect_api(base):
            for i in range(repeats):
                for name, (scale_out, threads) in variants.items():
                    runs[name].append(run_sweep(base, f"{name}-{i}", params, scale_out, threads))
    wall = {name: median([r["wall_s"] for r in rs]) for name, rs in runs.items()}
    seq, seq1, par = wall.get("sequential", float("nan")), wall["sequential_1thread"], wall["dask"]
    same = all(r["headlines"] == runs["sequential_1thread"][0]["headlines"] for rs in runs.values() for r in rs)
    print(f"speed-up of a {len(NLRS)}-point sweep, {WORKERS} Dask workers (1 thread each): {seq / par:.2f}x vs "
          f"sequential with {default_threads} torch threads ({seq:.1f} s -> {par:.1f} s), {seq1 / par:.2f}x vs "
          f"sequential with 1 thread ({seq1:.1f} s); same metrics per point (timings excluded): {same}", flush=True)
    name = "scale_out_smoke" if args.smoke else "scale_out" if steps == DEFAULT_STEPS else f"scale_out_steps{steps}"
    write_results(name, {
        "what": f"{len(NLRS)}-point NLR sweep (preset tiny, {steps} unlearning steps per point): sequential "
                f"({default_threads} and 1 torch threads) vs local Dask cluster of {WORKERS} worker processes x 1 "
                "thread (torch 1 thread each)",
        "command": "python bench/scale_out.py" + (" --smoke" if args.smoke else f" --steps {steps} --repeats {repeats}"
                                                   + (" --skip-default-threads" if args.skip_default_threads else "")),
        "points": len(NLRS), "workers": WORKERS, "steps_per_point": steps, "repeats": repeats,
        "sequential_s": seq, "sequential_1thread_s": seq1, "dask_s": par, "speedup": seq / par,
        "speedup_vs_1thread": seq1 / par, "sequential_torch_threads": default_threads, "identical_headlines": same,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "runs": runs,
    })


if __name__ == "__main__":  # Dask starts worker processes that import this module: guard the work
    main()
