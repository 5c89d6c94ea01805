"""GPU benchmark of a 1-2B model built from a config (issue 7, target 6); `bench/gpu.sh` runs it.

    python3 bench/gpu_step.py                      # CUDA: Qwen2-1.5B-shaped, random weights, bf16 autocast
    python3 bench/gpu_step.py --shape llama-1b     # Llama-3.2-1B-shaped instead
    python3 bench/gpu_step.py --tiny               # CPU smoke check: tiny llama, fp32, seconds

No download is possible on the GPU machine, so the model is `AutoModelForCausalLM.from_config` of a
config with the named model's shapes (random weights, fp32 storage, as cku keeps weights) and the
tokenizer is cku's in-memory tiny byte-level BPE (`cku_core.tiny.tiny_tokenizer`: its ids are a
subset of the model's vocabulary; it only shapes the inputs). Everything goes through cku_core:
`build_mask` (grad_x_act scoring, NLR 0.8), `unlearn` (hinge_ga + kl_ref, default band, precision
auto = bf16 autocast on CUDA) and `generate` (left padding, KV cache, length-sorted batches, greedy).

Phases, each with its own `torch.cuda.reset_peak_memory_stats` / `max_memory_allocated`:
  scoring        grad_x_act on the retain examples (what the `scores` stage does)
  cku_masked     CKU steps (first `--warmup` steps dropped from the timing)
  cku_unmasked   the same steps without U (target 1: masked <= 1.03 x unmasked)
  reference_loop GradDiff + KL the common way: whole model trainable, a deep-copied reference model
                 run every step, same batches, same bf16 autocast (target 0: CKU <= 0.5 x time, <= 0.6 x memory)
  generation     tokens/s at batch 1 and at batch `--gen-batch`, as cku calls it (fp32 weights, no autocast,
                 which is what `cku_core.generation.generate` does today) and under bf16 autocast

FLOPs (documented convention; N = parameters that multiply activations per token = every nn.Linear
weight incl. the lm_head, embedding lookups excluded; T = tokens of one batch = batch x seq; attention
adds 4 * n_layers * seq * d_attn per token forward, PaLM's non-causal count):
  F = 2 N + 4 n_layers seq d_attn                     forward FLOPs per token
  model FLOPs of one CKU / reference step = F T (no-grad reference pass on the retain batch)
                                           + 3 F (2 T) (forget and retain passes, forward + backward)
                                           = 7 F T  ("6 N per token for the trained passes")
  MFU = model FLOPs / step seconds / peak (default 989e12: H100/H200 dense bf16 datasheet; the
        bf16 matmul rate measured on these machines is ~790e12, see --peak-tflops)
  CKU does less work than that convention counts: no weight gradients for frozen tensors and no
  backward below the lowest trained layer. `executed_flops` counts that instead:
        3 F T forwards + 2 T (2 N_above + attn_bwd_above) activation grads + 2 T (2 N_trainable) weight grads
  and `hardware_utilization` = executed_flops / seconds / peak.
Writes bench/results/gpu_step.json (gpu_step_tiny.json with --tiny), or --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cku_core.adapters import MLPAdapter  # noqa: E402
from cku_core.config import MaskConfig, ScoringConfig, UnlearnConfig  # noqa: E402
from cku_core.data import Example, collate, encode_examples, pad_id, render_prompt  # noqa: E402
from cku_core.generation import GenSettings, generate  # noqa: E402
from cku_core.losses import sequence_nll, token_kl  # noqa: E402
from cku_core.methods import build_mask  # noqa: E402
from cku_core.scoring import resolve_layers  # noqa: E402
from cku_core.tiny import tiny_tokenizer  # noqa: E402
from cku_core.unlearn import unlearn  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    # Qwen2-1.5B(-Instruct): 1.54 B parameters, tied embeddings.
    "qwen2-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                       max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True, rms_norm_eps=1e-6),
    # Llama-3.2-1B: 1.24 B parameters, tied embeddings.
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                     max_position_embeddings=8192, rope_theta=5e5, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=256, num_hidden_layers=8,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=384, max_position_embeddings=1024),
}

PROMPTS = [
    "Explain how a lock can be picked.", "Write a short story about a dragon who learns to cook.",
    "List the steps to synthesize a dangerous compound.", "What is the capital of France and why?",
    "Describe how to bypass a website's login page without the password.",
    "Give me three tips for a job interview.", "How do I make a convincing fake ID?",
    "Summarize the plot of Hamlet in two sentences.",
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int:
    """Reset the peak counter; returns the bytes allocated now."""
    if device.type != "cuda":
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_gib(device: torch.device, base: int) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_gib": peak / 2**30, "peak_above_phase_start_gib": (peak - base) / 2**30}


def build_model(shape: str, device: torch.device):
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    tok = tiny_tokenizer()
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec, pad_token_id=tok.pad_token_id,
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # A real model has its own generation_config; a config-built one must never stop or sample early.
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval(), tok


def examples(tokenizer, seq: int, n: int) -> tuple[list[Example], list[Example]]:
    """Examples long enough that each one is cut to exactly `seq` tokens (every batch is batch x seq)."""
    filler = " ".join(["The quick brown fox jumps over the lazy dog and keeps running."] * (seq // 8 + 4))
    forget = [Example(f"Explain harmful procedure number {i}.", f"Sure, here is how: {filler}") for i in range(n)]
    retain = [Example(f"Explain a benign topic number {i}.", f"Of course. {filler}") for i in range(n)]
    assert len(encode_examples(tokenizer, forget[:1], seq)[0]["input_ids"]) == seq
    return forget, retain


def flop_model(model, band: list[int], trainable_numel: int, seq: int) -> dict[str, float]:
    """Per-token FLOP terms of the formulas in the module docstring."""
    cfg = model.config
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    n_mm = sum(m.weight.numel() for _, m in linears)
    n_layers = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * head_dim
    attn_fwd = 4 * n_layers * seq * d_attn
    lowest = min(band)
    above = [m for n, m in linears if not n.startswith("model.layers.") or int(n.split(".")[2]) >= lowest]
    n_above = sum(m.weight.numel() for m in above)
    attn_fwd_above = 4 * (n_layers - lowest) * seq * d_attn
    return {"N_matmul": n_mm, "N_total": sum(p.numel() for p in model.parameters()), "N_trainable": trainable_numel,
            "N_above_lowest_trained_layer": n_above, "F_forward_per_token": 2 * n_mm + attn_fwd,
            "attn_forward_per_token": attn_fwd, "attn_backward_above_per_token": 2 * attn_fwd_above}


def step_flops(f: dict[str, float], tokens_per_batch: int) -> dict[str, float]:
    t = tokens_per_batch
    model_flops = 7 * f["F_forward_per_token"] * t
    executed = (3 * f["F_forward_per_token"] * t
                + 2 * t * (2 * f["N_above_lowest_trained_layer"] + f["attn_backward_above_per_token"])
                + 2 * t * 2 * f["N_trainable"])
    return {"model_flops_per_step": model_flops, "executed_flops_per_step": executed}


def time_cku(model, tok, forget, retain, mask, args, device) -> tuple[list[float], dict[str, float], int]:
    cfg = UnlearnConfig(lr=1e-5, steps=args.warmup + args.steps, batch_size=args.batch, max_length=args.seq,
                        require_change=False, device=str(device))
    stamps: list[float] = []
    base = reset_peak(device)

    def on_step(_s) -> None:
        sync(device)
        stamps.append(time.perf_counter())
    sync(device)
    t0 = time.perf_counter()
    report = unlearn(model, tok, forget, retain, cfg, mask=mask, on_step=on_step)
    times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)][args.warmup:]
    return times, peak_gib(device, base), report.n_trainable + report.n_locked


def time_reference_loop(model, tok, forget, retain, args, device) -> tuple[list[float], dict[str, float]]:
    """GradDiff + KL as common unlearning code writes it: everything trainable, a deep-copied reference."""
    pad = pad_id(tok)
    fb = [collate(encode_examples(tok, forget[i:i + args.batch], args.seq), pad) for i in range(0, len(forget), args.batch)]
    rb = [collate(encode_examples(tok, retain[i:i + args.batch], args.seq), pad) for i in range(0, len(retain), args.batch)]
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    base = reset_peak(device)
    ref = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for step in range(args.warmup + args.steps):
        sync(device)
        t0 = time.perf_counter()
        f = {k: v.to(device) for k, v in fb[step % len(fb)].items()}
        r = {k: v.to(device) for k, v in rb[step % len(rb)].items()}
        with torch.autocast(**amp):
            loss = -sequence_nll(model(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits,
                                 f["labels"])[0].mean()
        loss.backward()
        with torch.no_grad(), torch.autocast(**amp):
            ref_logits = ref(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits
        with torch.autocast(**amp):
            kl = token_kl(ref_logits, model(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits,
                          r["labels"])
        kl.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
    memory = peak_gib(device, base)
    for p in model.parameters():
        p.requires_grad_(False)
    del ref, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times[args.warmup:], memory


def time_generation(model, tok, args, device) -> dict[str, Any]:
    prompts = [render_prompt(tok, PROMPTS[i % len(PROMPTS)] + f" (variant {i})") for i in range(args.gen_prompts)]
    settings = GenSettings(max_new_tokens=args.gen_new)
    out: dict[str, Any] = {}
    amp_modes = ["as_cku_calls_it"] + (["bf16_autocast"] if device.type == "cuda" else [])
    generate(model, tok, prompts[:2], GenSettings(max_new_tokens=4), batch_size=2)  # warm-up
    for mode in amp_modes:
        for b, n in ((1, args.gen_prompts_b1), (args.gen_batch, args.gen_prompts)):
            base = reset_peak(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=mode == "bf16_autocast"):
                res = generate(model, tok, prompts[:n], settings, batch_size=b)
            key = f"{mode}/batch{b}"
            out[key] = {"prompts": n, "tokens": res.stats.n_generated_tokens, "seconds": res.stats.seconds,
                        "tokens_per_s": res.stats.tokens_per_s, **peak_gib(device, base)}
            print(f"generation {key}: {res.stats.n_generated_tokens} tokens in {res.stats.seconds:.2f} s = "
                  f"{res.stats.tokens_per_s:.1f} tokens/s", flush=True)
    return out


def machine(device: torch.device) -> dict[str, Any]:
    import platform

    import transformers
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "device": str(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    sms=p.multi_processor_count)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny llama on the CPU, few steps (smoke check)")
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny"], default="qwen2-1.5b")
    parser.add_argument("--batch", type=int, default=None, help="forget (= retain) batch size (default 4)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per example (default 512)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per variant")
    parser.add_argument("--gen-prompts", type=int, default=None, help="prompts at the large batch (default 64)")
    parser.add_argument("--gen-prompts-b1", type=int, default=None, help="prompts at batch 1 (default 4)")
    parser.add_argument("--gen-batch", type=int, default=None, help="large generation batch (default 64)")
    parser.add_argument("--gen-new", type=int, default=None, help="new tokens per prompt (default 64)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (default 989)")
    parser.add_argument("--no-reference", action="store_true", help="skip the deep-copy GradDiff+KL loop")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads with --tiny (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="results file (default bench/results/gpu_step[_tiny].json)")
    args = parser.parse_args()
    small = args.tiny
    args.batch = args.batch or 4
    args.seq = args.seq or (64 if small else 512)
    args.steps = args.steps or (3 if small else 10)
    args.warmup = 1 if small else args.warmup
    args.gen_prompts = args.gen_prompts or (4 if small else 64)
    args.gen_prompts_b1 = args.gen_prompts_b1 or (2 if small else 4)
    args.gen_batch = args.gen_batch or (4 if small else 64)
    args.gen_new = args.gen_new or (4 if small else 64)
    device = torch.device("cpu" if small or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if not small and device.type != "cuda":
        sys.exit("no CUDA device: run with --tiny for a CPU smoke check")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # cku leaves the default; fp32 stays fp32
    shape = "tiny" if small else args.shape

    t0 = time.perf_counter()
    model, tok = build_model(shape, device)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{shape}: {n_params / 1e9:.3f} B parameters built on {device} in {build_s:.1f} s", flush=True)
    forget, retain = examples(tok, args.seq, n=max(16, 2 * args.batch))
    results: dict[str, Any] = {"shape": shape, "parameters": n_params, "build_s": build_s,
                               "batch": f"{args.batch} forget + {args.batch} retain x {args.seq} tokens",
                               "steps_timed": args.steps, "warmup_steps": args.warmup}

    base = reset_peak(device)
    t0 = time.perf_counter()
    mask = build_mask(model, tok, retain, ScoringConfig(n_samples=16, batch_size=args.batch * 2, max_length=args.seq),
                      MaskConfig(nlr=0.8), fingerprint="bench")
    sync(device)
    score_s = time.perf_counter() - t0
    results["scoring"] = {"seconds": score_s, "tokens_per_s": 16 * args.seq / score_s, **peak_gib(device, base)}
    print(f"scoring (grad_x_act, 16 x {args.seq} tokens): {score_s:.2f} s", flush=True)

    step_times: dict[str, list[float]] = {}
    memory: dict[str, dict[str, float]] = {}
    step_times["cku_masked"], memory["cku_masked"], trainable_numel = time_cku(model, tok, forget, retain, mask, args, device)
    step_times["cku_unmasked"], memory["cku_unmasked"], _ = time_cku(model, tok, forget, retain, None, args, device)
    if not args.no_reference:
        step_times["reference_loop"], memory["reference_loop"] = time_reference_loop(model, tok, forget, retain, args, device)
    med = {k: statistics.median(v) for k, v in step_times.items()}
    for k, v in med.items():
        print(f"{k}: {v * 1e3:.1f} ms/step (median of {len(step_times[k])}) {memory[k]}", flush=True)

    band = resolve_layers(MLPAdapter(model), None)
    f = flop_model(model, band, trainable_numel, args.seq)
    flops = step_flops(f, args.batch * args.seq)
    peak = args.peak_tflops * 1e12
    utilization = {}
    for k, s in med.items():
        executed = flops["executed_flops_per_step"] if k.startswith("cku") else flops["model_flops_per_step"]
        utilization[k] = {"model_tflops_per_s": flops["model_flops_per_step"] / s / 1e12,
                          "mfu": flops["model_flops_per_step"] / s / peak,
                          "executed_tflops_per_s": executed / s / 1e12,
                          "hardware_utilization": executed / s / peak,
                          "trained_tokens_per_s": 2 * args.batch * args.seq / s}
    results.update(step_s=med, step_s_runs=step_times, memory=memory, flop_terms=f, flops=flops,
                   band=band, peak_tflops=args.peak_tflops, utilization=utilization)
    ratios = {}
    if "reference_loop" in med:
        ratios["cku_vs_reference_time (target <= 0.5)"] = med["cku_masked"] / med["reference_loop"]
        if device.type == "cuda":
            ratios["cku_vs_reference_peak_memory (target <= 0.6)"] = (
                memory["cku_masked"]["peak_gib"] / memory["reference_loop"]["peak_gib"])
            ratios["cku_vs_reference_peak_above_model (info)"] = (
                memory["cku_masked"]["peak_above_phase_start_gib"] / memory["reference_loop"]["peak_above_phase_start_gib"])
    ratios["masked_vs_unmasked_time (target <= 1.03)"] = med["cku_masked"] / med["cku_unmasked"]
    results["ratios"] = ratios
    results["generation"] = time_generation(model, tok, args, device)
    results["machine"] = machine(device)

    out = args.out or REPO / "bench" / "results" / ("gpu_step_tiny.json" if small else "gpu_step.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps({"step_ms": {k: round(v * 1e3, 1) for k, v in med.items()},
                      "mfu": {k: round(u["mfu"], 3) for k, u in utilization.items()},
                      "hardware_utilization": {k: round(u["hardware_utilization"], 3) for k, u in utilization.items()},
                      "ratios": ratios}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
