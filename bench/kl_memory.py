"""Experiment for target 2 (kl_ref peak memory <= 1.15 x plain fine-tuning): a leaner `token_kl`.

    python bench/kl_memory.py            # SmolLM2, same batches as bench/unlearn_step.py (4 x 128 tokens)
    python bench/kl_memory.py --tiny     # smoke check

`cku_core.losses.token_kl` keeps five vocabulary-sized tensors alive at once on every position of
the retain batch (ref log-probs, their exp, current log-probs, the difference, the product; autograd
saves two of them). The lean version, patched in here only (the library is unchanged):
  - reference log-probs under no_grad (nothing of the reference is saved for backward),
  - only response positions (the mask is applied before the softmax, not after),
  - `F.kl_div(logp, ref_logp, log_target=True)`: one fused elementwise op, whose backward needs
    only the reference log-probs that are alive anyway.
Each variant runs in its own subprocess (peak RSS reset after loading and scoring, as in
bench/unlearn_step.py); per-step time is taken there too. The KL values of both versions are
compared on one batch first. Writes bench/results/kl_memory.json.
"""

from __future__ import annotations

import argparse
import json
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


def token_kl_lean(ref_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    ref_logits, _, mask = losses.shift(ref_logits, labels)
    with torch.no_grad():
        ref_logp = F.log_softmax(ref_logits[mask].float(), -1)
    logp = F.log_softmax(logits[:, :-1, :][mask].float(), -1)
    return F.kl_div(logp, ref_logp, log_target=True, reduction="sum") / mask.sum().clamp_min(1)


def patch(lean: bool) -> None:
    if lean:
        import cku_core.objectives.kl_ref as kl_mod
        kl_mod.token_kl = token_kl_lean


def child(variant: str, tiny: bool) -> None:
    torch.set_num_threads(2)
    model, tokenizer = us.load(tiny)
    forget, retain = us.toy_data(tokenizer)
    mask = build_mask(model, tokenizer, retain, ScoringConfig(n_samples=8), MaskConfig(nlr=0.8))
    patch(variant == "kl_ref_lean")
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
    print(json.dumps({"variant": variant, "peak_above_model_mib": peak - base, "step_s": median(steps)}))


def same_values(tiny: bool) -> dict[str, float]:
    model, tokenizer = us.load(tiny)
    _, retain = us.toy_data(tokenizer)
    b = next(iter(iter_batches(encode_examples(tokenizer, retain[:4], us.TOKENS), 4, pad_id(tokenizer))))
    with torch.no_grad():
        ref = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    cur = (ref + 0.05 * torch.randn_like(ref)).requires_grad_(True)
    a = losses.token_kl(ref, cur, b["labels"])
    (ga,) = torch.autograd.grad(a, cur)
    lean = token_kl_lean(ref, cur, b["labels"])
    (gl,) = torch.autograd.grad(lean, cur)
    return {"kl_current": float(a.detach()), "kl_lean": float(lean.detach()), "max_abs_grad_diff": float((ga - gl).abs().max())}


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
    names = ["plain_finetune_same_scope", "kl_ref_current", "kl_ref_lean"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        for n in names:
            cmd = [sys.executable, __file__, "--child", n] + (["--tiny"] if args.tiny else [])
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            runs[n].append(json.loads(out))
            print(f"repeat {r + 1}: {n}: {runs[n][-1]} ({time.perf_counter() - t0:.0f} s)", flush=True)
    mem = {n: median([x["peak_above_model_mib"] for x in runs[n]]) for n in names}
    step = {n: median([x["step_s"] for x in runs[n]]) for n in names}
    figures = {
        "model": "tiny-llama" if args.tiny else "SmolLM2-135M-Instruct (fp32)",
        "batch": f"{us.BATCH} forget + {us.BATCH} retain x {us.TOKENS} tokens", "repeats": args.repeats,
        "equivalence": check, "peak_mib_above_model": mem, "step_s": step, "runs": runs,
        "ratios": {
            "kl_ref_current_vs_plain_memory (target <= 1.15)": mem["kl_ref_current"] / mem["plain_finetune_same_scope"],
            "kl_ref_lean_vs_plain_memory (target <= 1.15)": mem["kl_ref_lean"] / mem["plain_finetune_same_scope"],
            "kl_ref_lean_vs_current_step_time": step["kl_ref_lean"] / step["kl_ref_current"],
        },
    }
    print(json.dumps(figures["ratios"], indent=2))
    write_results("kl_memory_tiny" if args.tiny else "kl_memory", figures)


if __name__ == "__main__":
    main()
