"""Evaluation throughput: batched vs one-prompt-at-a-time generation, side by side (issue 7, target 4).

    python bench/generation.py                 # SmolLM2-135M-Instruct, 32 AdvBench prompts x 48 new tokens
    python bench/generation.py --tiny          # tiny random llama, seconds, for a smoke check
    python bench/generation.py --batch-sizes 1 4 16 32 --rounds 5

Both variants call `cku_core.generation.generate` (left padding, KV cache, length-sorted batches,
greedy) on the same prompts: real AdvBench requests rendered with the model's chat template. The
batch sizes run round-robin in one process, the order reversed every other round, so machine noise
hits all of them alike. Figures: tokens/s = generated tokens (eos included, padding after eos
excluded) / wall seconds of the whole `generate` call, median over rounds; the speed-up is the
median of the per-round ratios. Greedy outputs of each batch size are compared with batch 1
(left padding may change a late token through float rounding; the agreement is reported).
Writes bench/results/generation.json (generation_tiny.json with --tiny).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _common import load_model, median, verdict, write_results

from cku_core.data import render_prompt
from cku_core.generation import GenSettings, generate

TARGET_SPEEDUP = 5.0


def prompts(tokenizer, n: int) -> list[str]:
    from cku_core.eval import load_dataset

    records = load_dataset("advbench").records[:n]
    return [render_prompt(tokenizer, r.prompt) for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random llama, few prompts (smoke check)")
    parser.add_argument("--n-prompts", type=int, default=None, help="prompts (default 32; 8 with --tiny)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="new tokens (default 48; 8 with --tiny)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16],
                        help="batch sizes to compare; the first is the baseline (default: 1 16)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; 2 with --tiny)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    n_prompts = args.n_prompts or (8 if args.tiny else 32)
    max_new = args.max_new_tokens or (8 if args.tiny else 48)
    rounds = args.rounds or (2 if args.tiny else 3)
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model(args.tiny)
    model.eval()
    texts = prompts(tokenizer, n_prompts)
    prompt_tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    settings = GenSettings(max_new_tokens=max_new)
    generate(model, tokenizer, texts[:2], GenSettings(max_new_tokens=4), batch_size=2)  # warm-up (kernels, caches)

    sizes = args.batch_sizes
    tps: dict[int, list[float]] = {b: [] for b in sizes}
    secs: dict[int, list[float]] = {b: [] for b in sizes}
    tokens: dict[int, list[int]] = {b: [] for b in sizes}
    outputs: dict[int, list[list[int]]] = {}
    for r in range(rounds):
        for b in (sizes if r % 2 == 0 else list(reversed(sizes))):
            res = generate(model, tokenizer, texts, settings, batch_size=b)
            tps[b].append(res.stats.tokens_per_s)
            secs[b].append(res.stats.seconds)
            tokens[b].append(res.stats.n_generated_tokens)
            outputs.setdefault(b, [o.token_ids for o in res.outputs])
            print(f"round {r + 1}/{rounds} batch {b:>3}: {res.stats.n_generated_tokens} tokens in "
                  f"{res.stats.seconds:.2f} s = {res.stats.tokens_per_s:.1f} tokens/s", flush=True)

    base = sizes[0]
    per_round = {b: [tps[b][i] / tps[base][i] for i in range(rounds)] for b in sizes}
    agreement = {b: sum(o == ob for o, ob in zip(outputs[b], outputs[base])) / len(texts) for b in sizes}
    best = sizes[-1] if len(sizes) > 1 else base
    speedup = median(per_round[best])
    figures = {
        "model": "tiny-llama" if args.tiny else "SmolLM2-135M-Instruct (fp32, CPU)",
        "workload": {"dataset": "advbench (first prompts, chat template)", "n_prompts": n_prompts,
                     "max_new_tokens": max_new, "decoding": "greedy", "prompt_tokens_min_median_max":
                     [min(prompt_tokens), statistics.median(prompt_tokens), max(prompt_tokens)]},
        "rounds": rounds,
        "tokens_per_s": {str(b): median(tps[b]) for b in sizes},
        "tokens_per_s_runs": {str(b): tps[b] for b in sizes},
        "seconds_median": {str(b): median(secs[b]) for b in sizes},
        "generated_tokens": {str(b): tokens[b][0] for b in sizes},
        f"speedup_vs_batch_{base}": {str(b): median(per_round[b]) for b in sizes},
        f"greedy_agreement_with_batch_{base}": {str(b): agreement[b] for b in sizes},
        "target": {"name": f"batch {best} tokens/s >= {TARGET_SPEEDUP}x batch {base}", "value": speedup,
                   "verdict": verdict(speedup, TARGET_SPEEDUP, higher_is_better=True)},
    }
    print()
    for b in sizes:
        print(f"batch {b:>3}: {median(tps[b]):8.1f} tokens/s  ({median(per_round[b]):.2f}x batch {base}, "
              f"greedy outputs identical to batch {base}: {agreement[b]:.0%})")
    print(f"target: batch {best} >= {TARGET_SPEEDUP}x batch {base}: {speedup:.2f}x -> {figures['target']['verdict']}")
    write_results("generation_tiny" if args.tiny else "generation", figures)


if __name__ == "__main__":
    main()
