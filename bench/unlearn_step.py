"""Unlearning-step and scoring benchmarks, measured side by side in one run (issue 7, targets 0-3).

    python bench/unlearn_step.py            # SmolLM2-135M-Instruct (converted once to safetensors)
    python bench/unlearn_step.py --tiny     # a tiny random llama, seconds, for a smoke check

Time: variants run round-robin in one process (R rounds, per-step times after the first step of
each call), so machine noise hits all of them alike; we report medians and ratios.
Memory: each variant runs in its own subprocess and reports its peak RSS above the loaded model,
because a process's peak cannot be reset.
Writes bench/results/unlearn_step.json with the machine description.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig  # noqa: E402
from cku_core.data import Example, encode_examples, iter_batches, pad_id  # noqa: E402
from cku_core.losses import sequence_nll, token_kl  # noqa: E402
from cku_core.methods import build_mask  # noqa: E402
from cku_core.scoring import score_neurons  # noqa: E402
from cku_core.adapters import MLPAdapter  # noqa: E402
from cku_core.unlearn import locked_slices, prune_gradients, trainable_parameters, unlearn  # noqa: E402

TOKENS = 128
BATCH = 4


def load(tiny: bool):
    if tiny:
        from cku_core.tiny import tiny_model, tiny_tokenizer
        return tiny_model("llama", num_layers=8, hidden=64, d_ff=256), tiny_tokenizer()
    from cku_core.models import DEFAULT_MODEL, convert_gguf_to_safetensors, load_model_and_tokenizer, parse_model_spec
    folder = REPO / "artifacts" / "bench-model" / "smollm2-135m-instruct"
    if not folder.exists():
        convert_gguf_to_safetensors(parse_model_spec(DEFAULT_MODEL).path, folder)
    return load_model_and_tokenizer(str(folder))


def toy_data(tokenizer) -> tuple[list[Example], list[Example]]:
    """Examples padded out to ~TOKENS tokens each, so every batch is 4 x 128 tokens."""
    filler = " ".join(["The quick brown fox jumps over the lazy dog and keeps running."] * 12)
    forget = [Example(f"Explain harmful procedure number {i}.", f"Sure, here is how: {filler}") for i in range(16)]
    retain = [Example(f"Explain a benign topic number {i}.", f"Of course. {filler}") for i in range(16)]
    return forget, retain


def variants(mask_nlr: float) -> dict[str, dict]:
    base = dict(lr=1e-5, steps=3, batch_size=BATCH, max_length=TOKENS, require_change=False)
    return {
        "cku_masked": dict(cfg=UnlearnConfig(**base), mask=mask_nlr),
        "cku_unmasked": dict(cfg=UnlearnConfig(**base), mask=None),
        "plain_finetune_same_scope": dict(cfg=UnlearnConfig(**base, objective="ga", regularizer="retain_ce"), mask=None),
    }


def run_variant(name: str, model, tokenizer, forget, retain, mask, spec) -> list[float]:
    times: list[float] = []
    last = [0.0]

    def on_step(s) -> None:
        times.append(s.seconds - last[0])
        last[0] = s.seconds
    if name == "reference_loop":
        return reference_loop(model, tokenizer, forget, retain, steps=3)
    unlearn(model, tokenizer, forget, retain, spec["cfg"], mask=mask if spec["mask"] is not None else None,
            on_step=on_step)
    return times[1:]


def reference_loop(model, tokenizer, forget, retain, steps: int) -> list[float]:
    """GradDiff with a KL retain loss the way common unlearning frameworks write it:
    the whole model trainable, a deep copy of the model as reference, run every step."""
    ref = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    pad = pad_id(tokenizer)
    fb = list(iter_batches(encode_examples(tokenizer, forget, TOKENS), BATCH, pad))
    rb = list(iter_batches(encode_examples(tokenizer, retain, TOKENS), BATCH, pad))
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        f, r = fb[step % len(fb)], rb[step % len(rb)]
        f_logits = model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
        loss = -sequence_nll(f_logits, f["labels"])[0].mean()
        r_logits = model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
        with torch.no_grad():
            ref_logits = ref(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
        loss = loss + token_kl(ref_logits, r_logits, r["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    for p in model.parameters():
        p.requires_grad_(False)
    return times[1:]


def mask_op_seconds(model, mask, repeats: int = 50) -> float:
    """Median time of the only work masking adds to a step: zeroing the locked gradient rows/columns.

    Timed on its own with gradients present, so it is not drowned in the step's noise; the masked
    step also differs by nothing else (weight decay is 0 by default, so the parameter groups match).
    """
    adapter = MLPAdapter(model)
    trainable = trainable_parameters(model, adapter, mask.layers, "selected_mlp")
    for p in trainable.values():
        p.grad = torch.randn_like(p)
    slices = locked_slices(adapter, mask, trainable)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        prune_gradients(slices)
        times.append(time.perf_counter() - t)
    for p in trainable.values():
        p.grad = None
    return statistics.median(times)


def paired_ratio(step_times: dict[str, list[list[float]]], a: str, b: str) -> float:
    """Median over rounds of (median step of a) / (median step of b) within the same round."""
    return statistics.median(statistics.median(x) / statistics.median(y) for x, y in zip(step_times[a], step_times[b]))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(name: str, tiny: bool) -> None:
    """Subprocess entry: load, note RSS, run 3 steps of one variant, print the peak above the model."""
    torch.set_num_threads(2)
    model, tokenizer = load(tiny)
    forget, retain = toy_data(tokenizer)
    mask = build_mask(model, tokenizer, retain, ScoringConfig(n_samples=8), MaskConfig(nlr=0.8))
    import gc
    gc.collect()
    reset = reset_peak_rss()  # loading and scoring peaked higher than a CKU step may: not theirs to count
    base = current_rss_mib()
    run_variant(name, model, tokenizer, forget, retain, mask, variants(0.8).get(name, {"mask": None}))
    peak = status_mib("VmHWM") if reset else peak_rss_mib()
    print(json.dumps({"variant": name, "peak_above_model_mib": peak - base, "model_rss_mib": base,
                      "peak_reset": reset}))


def reset_peak_rss() -> bool:
    """Give freed heap back to the OS and restart the kernel's peak-RSS counter (VmHWM) here.

    Without it the peak of a child is max(load + scoring, step), and glibc keeps freed arenas in the
    RSS `base` is read from. Linux: `echo 5 > /proc/self/clear_refs` resets VmHWM.
    """
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def current_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def scoring_cost(model, tokenizer, retain, rounds: int) -> dict[str, float]:
    """grad_x_act vs one forward+backward, activation vs one forward, over the same tokens."""
    pad = pad_id(tokenizer)
    batches = list(iter_batches(encode_examples(tokenizer, retain[:8], TOKENS), 8, pad))
    t: dict[str, list[float]] = {k: [] for k in ("grad_x_act", "fwd_bwd", "activation", "forward")}
    for _ in range(rounds):
        for key in t:
            t0 = time.perf_counter()
            if key in ("grad_x_act", "activation"):
                score_neurons(model, tokenizer, retain[:8], ScoringConfig(scorer=key, n_samples=8, batch_size=8,
                                                                         max_length=TOKENS))
            elif key == "fwd_bwd":
                for p in model.parameters():
                    p.requires_grad_(True)
                b = batches[0]
                sequence_nll(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                             b["labels"])[0].sum().backward()
                model.zero_grad(set_to_none=True)
                for p in model.parameters():
                    p.requires_grad_(False)
            else:
                with torch.inference_mode():
                    b = batches[0]
                    model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            t[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in t.items()}


MEMORY_METHOD = ("peak RSS of a subprocess per variant above its RSS after loading and scoring (VmHWM reset "
                 "there), MALLOC_MMAP_THRESHOLD_=65536 so freed tensors leave the RSS; median of the repeats")


def measure_memory(names: list[str], tiny: bool, repeats: int) -> dict[str, float]:
    """Median peak above the loaded model, each variant in its own subprocess, round-robin.

    glibc keeps freed heap in the RSS unless every buffer is its own mmap, so peaks otherwise depend
    on fragmentation (+-10% between identical runs); the mmap threshold makes them repeatable.
    """
    runs: dict[str, list[float]] = {n: [] for n in names}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for r in range(repeats):
        for name in names:
            cmd = [sys.executable, __file__, "--memory-child", name] + (["--tiny"] if tiny else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
            runs[name].append(json.loads(out)["peak_above_model_mib"])
            print(f"memory {r + 1}/{repeats} {name}: {runs[name][-1]:.0f} MiB above the loaded model", flush=True)
    return {n: statistics.median(v) for n, v in runs.items()}


def memory_ratios(memory: dict[str, float]) -> dict[str, float]:
    return {
        "cku_vs_reference_memory (target <= 0.6)": memory["cku_masked"] / memory["reference_loop"],
        "kl_ref_vs_plain_finetune_memory (target <= 1.15)": memory["cku_masked"] / memory["plain_finetune_same_scope"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random llama instead of SmolLM2 (smoke check)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds for the timing comparison")
    parser.add_argument("--memory-repeats", type=int, default=3, help="memory subprocesses per variant (median)")
    parser.add_argument("--memory-only", action="store_true",
                        help="only re-measure memory and update the memory figures of the existing results file")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.tiny)
        return
    results_file = REPO / "bench" / "results" / ("unlearn_step_tiny.json" if args.tiny else "unlearn_step.json")
    if args.memory_only:
        figures = json.loads(results_file.read_text())
        memory = measure_memory(["reference_loop", *variants(0.8)], args.tiny, args.memory_repeats)
        figures["peak_mib_above_model"] = memory
        figures["memory_method"] = MEMORY_METHOD
        figures["ratios"].update(memory_ratios(memory))
        figures["memory_date"] = time.strftime("%Y-%m-%d %H:%M:%S")
        results_file.write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures["ratios"], indent=2))
        return
    torch.set_num_threads(2)
    model, tokenizer = load(args.tiny)
    forget, retain = toy_data(tokenizer)
    original = copy.deepcopy(model.state_dict())
    mask = build_mask(model, tokenizer, retain, ScoringConfig(n_samples=8), MaskConfig(nlr=0.8))
    specs = variants(0.8)
    names = ["reference_loop", *specs]
    per_round: dict[str, list[list[float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            model.load_state_dict(original)
            per_round[name].append(run_variant(name, model, tokenizer, forget, retain, mask, specs.get(name, {})))
            print(f"round {r + 1}/{args.rounds} {name}: {statistics.median(per_round[name][-1]):.3f} s/step", flush=True)
    model.load_state_dict(original)
    step_times = {n: [t for rnd in v for t in rnd] for n, v in per_round.items()}
    mask_op = mask_op_seconds(model, mask)
    scoring = scoring_cost(model, tokenizer, retain, rounds=max(args.rounds, 3))

    memory = measure_memory(names, args.tiny, args.memory_repeats)

    med = {n: statistics.median(v) for n, v in step_times.items()}
    figures = {
        "step_s": med,
        "peak_mib_above_model": memory,
        "memory_method": MEMORY_METHOD,
        "scoring_s": scoring,
        "mask_op_s": mask_op,
        "step_s_per_round": {n: [statistics.median(r) for r in v] for n, v in per_round.items()},
        "ratios": {
            "cku_vs_reference_time (target <= 0.5)": med["cku_masked"] / med["reference_loop"],
            "masked_vs_unmasked_time (target <= 1.03)": med["cku_masked"] / med["cku_unmasked"],
            "masked_vs_unmasked_time_paired_rounds": paired_ratio(per_round, "cku_masked", "cku_unmasked"),
            "masked_vs_unmasked_isolated (unmasked step + mask op) / unmasked step":
                (med["cku_unmasked"] + mask_op) / med["cku_unmasked"],
            **memory_ratios(memory),
            "grad_x_act_vs_fwd_bwd (target <= 1.2)": scoring["grad_x_act"] / scoring["fwd_bwd"],
            "activation_vs_forward (target <= 1.1)": scoring["activation"] / scoring["forward"],
        },
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "model": "tiny-llama" if args.tiny else "SmolLM2-135M-Instruct (fp32)",
        "batch": f"{BATCH} forget + {BATCH} retain x {TOKENS} tokens",
        "rounds": args.rounds,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures["ratios"], indent=2))


if __name__ == "__main__":
    main()
