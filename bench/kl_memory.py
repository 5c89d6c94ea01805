"""Target 2 (kl_ref run peak memory <= 1.15 x plain fine-tuning of the same scope), measured precisely.

    python bench/kl_memory.py                # SmolLM2, same batches as bench/unlearn_step.py (4 x 128 tokens)
    python bench/kl_memory.py --tiny         # smoke check

Variants, each in its own subprocess, round-robin over `--repeats`:
  plain_finetune_same_scope  ga + retain_ce, no mask (the baseline of target 2)
  kl_ref                     CKU as the library does it now: the reference pass is reduced at once to
                             probabilities at response positions (`cku_core.losses.reference_tokens`)
  kl_ref_full_logits         the previous formulation, patched in here only: the reference logits stay
                             alive for the whole step and KL is taken over every position with five
                             vocabulary-sized temporaries (`ref_logp.exp() * (ref_logp - logp)`)
Peak memory: the children run with MALLOC_MMAP_THRESHOLD_=65536, so every tensor buffer is its own
mmap and goes back to the OS when freed (glibc otherwise keeps freed heap, and RSS peaks then depend
on fragmentation: +-10% run to run); the kernel's peak-RSS counter is reset after loading and scoring.
Figures: medians. The KL values of both formulations are compared on one batch first.
Writes bench/results/kl_memory.json (kl_memory_tiny.json with --tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812
from _common import median, write_results

import unlearn_step as us
from cku_core import losses
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig
from cku_core.data import encode_examples, iter_batches, pad_id
from cku_core.methods import build_mask
from cku_core.unlearn import unlearn

DETERMINISTIC_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def token_kl_full_logits(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """cku_core.losses.token_kl before commit b79f7f7."""
    ref_logits, _, mask = losses.shift(ref_logits, labels)
    logits = logits[:, :-1, :]
    ref_logp = F.log_softmax(ref_logits.float(), -1)
    logp = F.log_softmax(logits.float(), -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def patch_full_logits() -> None:
    """Make unlearn() keep the raw reference logits and use the full-vocabulary, all-position KL."""
    import cku_core.objectives.kl_ref as kl_mod
    import cku_core.unlearn as un

    un.reference_tokens = lambda ref_logits, labels: ref_logits
    kl_mod.token_kl_to = lambda ref_logits, logits, labels: token_kl_full_logits(ref_logits, logits, labels)


def child(variant: str, tiny: bool) -> None:
    torch.set_num_threads(2)
    model, tokenizer = us.load(tiny)
    forget, retain = us.toy_data(tokenizer)
    mask = build_mask(model, tokenizer, retain, ScoringConfig(n_samples=8), MaskConfig(nlr=0.8))
    if variant == "kl_ref_full_logits":
        patch_full_logits()
    base_cfg = {"lr": 1e-5, "steps": 4, "batch_size": us.BATCH, "max_length": us.TOKENS, "require_change": False}
    cfg = UnlearnConfig(**base_cfg) if variant.startswith("kl_ref") else \
        UnlearnConfig(**base_cfg, objective="ga", regularizer="retain_ce")
    import gc
    gc.collect()
    reset = us.reset_peak_rss()
    base = us.current_rss_mib()
    stamps: list[float] = []
    unlearn(model, tokenizer, forget, retain, cfg, mask=mask if variant.startswith("kl_ref") else None,
            on_step=lambda s: stamps.append(s.seconds))
    peak = us.status_mib("VmHWM") if reset else us.peak_rss_mib()
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    print(json.dumps({"variant": variant, "peak_above_model_mib": peak - base, "step_s": median(steps),
                      "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}))


def same_values(tiny: bool) -> dict[str, float]:
    model, tokenizer = us.load(tiny)
    _, retain = us.toy_data(tokenizer)
    b = next(iter(iter_batches(encode_examples(tokenizer, retain[:4], us.TOKENS), 4, pad_id(tokenizer))))
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    cur = (ref + 0.05 * torch.randn_like(ref)).requires_grad_(True)
    a = token_kl_full_logits(ref, cur, b["labels"])
    (ga,) = torch.autograd.grad(a, cur)
    now = losses.token_kl_to(losses.reference_tokens(ref, b["labels"]), cur, b["labels"])
    (gn,) = torch.autograd.grad(now, cur)
    return {"kl_full_logits": float(a.detach()), "kl_library": float(now.detach()),
            "max_abs_grad_diff": float((ga - gn).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="subprocess runs per variant (round-robin)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.tiny)
        return
    check = same_values(args.tiny)
    print(f"same loss: {check}", flush=True)
    names = ["plain_finetune_same_scope", "kl_ref", "kl_ref_full_logits"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names:
            cmd = [sys.executable, __file__, "--child", n] + (["--tiny"] if args.tiny else [])
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 env=dict(os.environ, **DETERMINISTIC_MALLOC)).stdout.strip().splitlines()[-1]
            runs[n].append(json.loads(out))
            print(f"repeat {r + 1}: {n}: {runs[n][-1]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    mem = {n: median([x["peak_above_model_mib"] for x in runs[n]]) for n in names}
    step = {n: median([x["step_s"] for x in runs[n]]) for n in names}
    figures = {
        "model": "tiny-llama" if args.tiny else "SmolLM2-135M-Instruct (fp32)",
        "batch": f"{us.BATCH} forget + {us.BATCH} retain x {us.TOKENS} tokens", "repeats": args.repeats,
        "equivalence": check, "peak_mib_above_model": mem, "step_s": step, "runs": runs,
        "allocator": DETERMINISTIC_MALLOC,
        "ratios": {
            "kl_ref_vs_plain_memory (target <= 1.15)": mem["kl_ref"] / mem["plain_finetune_same_scope"],
            "kl_ref_full_logits_vs_plain_memory (before b79f7f7)":
                mem["kl_ref_full_logits"] / mem["plain_finetune_same_scope"],
            "kl_ref_vs_full_logits_step_time": step["kl_ref"] / step["kl_ref_full_logits"],
        },
    }
    print(json.dumps(figures["ratios"], indent=2))
    write_results("kl_memory_tiny" if args.tiny else "kl_memory", figures)


if __name__ == "__main__":
    main()
