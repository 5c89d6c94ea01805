"""Named parameter sets for `cku run --preset NAME` (explicit --config / --set values override them).

`tiny` runs every stage on a random ~100k-parameter model and a handful of prompts in seconds: it is
what the tests and a first smoke run use. `smollm2` is the default model with defaults sized for a
2-core CPU.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": {"spec": "tiny:llama"},
        "data": {"n_forget": 4, "n_eval_harmful": 3, "n_scoring": 4, "n_eval_benign": 3},
        "scoring": {"n_samples": 4, "batch_size": 4, "max_length": 64, "layers": [1, 2]},
        "unlearn": {"steps": 2, "batch_size": 2, "max_length": 64, "lr": 1e-3},
        "evaluation": {"attacks": ["direct", "prefill_sure", "decoding_grid"], "n_eval_prompts": 3,
                       "n_over_refusal": 2, "n_benign": 3, "n_mc": 4, "max_new_tokens": 8, "batch_size": 8,
                       "decoding_grid": [{"temperature": 1.0}], "max_length": 64},
    },
    # The main job on SmolLM2-135M-Instruct, sized for a 2-core CPU (cold run ~10-15 min, rerun cached).
    # Scale up: data.n_forget / n_scoring (128 = the method's N_id), evaluation.n_eval_prompts,
    # max_new_tokens and the full decoding grid, unlearn.steps.
    "smollm2": {
        "data": {"n_forget": 32, "n_eval_harmful": 12, "n_scoring": 32, "n_eval_benign": 16,
                 "n_align_harmful": 64, "n_align_benign": 48},
        # The raw model refuses ~0% of harmful requests; the paper starts from an aligned model, so
        # every run starts with the safety fine-tune (`align`; preset `smollm2-raw` skips it).
        # Measured (keyword judge, 12 held-out prompts per attack): direct ASR 0.92 -> 0.0 while
        # prefill 0.92, many-shot 0.92 and decoding 0.67 still break it; benign PPL 11.05 -> 11.95.
        "align": {"enabled": True, "steps": 10, "lr": 3e-5, "batch_size": 8, "max_length": 128},
        "scoring": {"n_samples": 32, "batch_size": 8, "max_length": 256},
        # lr 1e-3: with NLR 0.8 only 20% of the band's units move, so CKU needs a larger step than
        # full-band GA to forget as much (calibrated on this model: held-out harmful NLL 1.26 -> ~1.9).
        "unlearn": {"lr": 1e-3, "steps": 16, "batch_size": 4, "max_length": 256},
        # Every attack family; the persona family uses the short DAN template (the PyRIT AIM one is
        # ~450 tokens, which triples the cost of a CPU evaluation). Full suite: evaluation.attacks.
        "evaluation": {"attacks": ["direct", "prefix_injection", "refusal_suppression", "persona_short",
                                   "nested_fiction", "json_wrapper", "base64", "prefill_sure", "many_shot",
                                   "decoding_grid"],
                       "n_eval_prompts": 10, "n_over_refusal": 12, "n_benign": 16, "n_mc": 32,
                       "max_new_tokens": 32, "batch_size": 16, "decoding_grid": [{"temperature": 1.0, "top_k": 20}],
                       # every judge: phrase-level refusals, knowledge NLL of the raw model's harmful
                       # answers, and content similarity to them (MiniLM, calibrated per run)
                       "judges": ["refusal_keyword", "knowledge_nll", "embedding"]},
        "methods": ["original", "cku", "ga", "cku_random"],
        # GA moves every unit of the band: lr 5e-5 brings its held-out harmful NLL to about CKU's.
        "method_overrides": {"ga": {"lr": 5e-5}},
        # `cku sweep`: the paper's two analyses on this 30-layer model, the NLR sweep in the default
        # band (8-12) and the band sweep at NLR 0.8 (early / early-middle / middle / late).
        "design": "paper",
        "nlrs": [0.0, 0.2, 0.5, 0.8, 0.95],
        "bands": [[8, 9, 10, 11, 12], [3, 4, 5, 6, 7], [13, 14, 15, 16, 17], [23, 24, 25, 26, 27]],
        "objectives": ["hinge_ga"],
    },
}

# The same job on the raw model (no safety fine-tune): it answers nearly every harmful request.
PRESETS["smollm2-raw"] = {**PRESETS["smollm2"], "align": {**PRESETS["smollm2"]["align"], "enabled": False}}

# `cku matched`: methods compared at matched forgetting. The curves need only held-out harmful NLL,
# benign perplexity and the degenerate rate of benign answers, so evaluation is cut to those (plus
# direct-request ASR); max_new_tokens, batch_size and n_eval_prompts stay as in `smollm2` so the
# training examples and the knowledge references (hence the harmful-NLL scale) are the same.
_MATCHED_EVAL = {"attacks": ["direct"], "utility": ["perplexity", "kl", "over_refusal"], "n_mc": 0}
PRESETS["tiny-matched"] = {
    **PRESETS["tiny"],
    "evaluation": {**PRESETS["tiny"]["evaluation"], **_MATCHED_EVAL, "utility": ["perplexity", "over_refusal"]},
    "methods": ["cku", "ga"], "lrs": {"cku": [3e-3, 1e-2], "ga": [1e-4, 1e-3]}, "seeds": [42, 43],
}
PRESETS["smollm2-matched"] = {
    "data": PRESETS["smollm2"]["data"], "scoring": PRESETS["smollm2"]["scoring"],
    # 45 runs in ~40 min of 2 CPU cores: batch 2 halves a step's cost (~2.6 s for a regularized method,
    # ~1.2 s for GA) and 12 steps instead of 16 cut a quarter more. With AdamW the distance moved is
    # roughly lr x steps, so the grids below (calibrated at 16 steps) forget a little less per lr;
    # CKU's hinge saturates anyway (its held-out NLL levels off near 1.9), and every curve starts at
    # the original model, so the methods' ranges still overlap.
    "unlearn": {"steps": 12, "batch_size": 2, "max_length": 256},
    # On the aligned model direct requests are refused before any unlearning, so the prefill attack
    # (which still breaks it) is the ASR that can move; many-shot costs ~1k-token contexts per prompt.
    "evaluation": {"n_eval_prompts": 10, "n_over_refusal": 16, "n_benign": 16, "max_new_tokens": 32,
                   "batch_size": 16, **_MATCHED_EVAL, "attacks": ["direct", "prefill_sure"]},
    "methods": ["cku", "cku_random", "ga", "graddiff", "npo"],
    # Known on this model (16 steps, batch 4, NLR 0.8, layers 8-12), held-out harmful NLL from 1.26:
    # CKU lr 1e-4 / 3e-4 / 1e-3 -> 1.32 / 1.47 / 1.89; GA 3e-5 / 1e-4 -> 1.55 / 3.09 (5e-5 -> ~2.2).
    # The grids overlap on ~1.3-1.9; GradDiff and NPO (GA with a retain term) get a wider top.
    "lrs": {"cku": [1e-4, 3e-4, 1e-3], "cku_random": [1e-4, 3e-4, 1e-3], "ga": [1e-5, 3e-5, 6e-5],
            "graddiff": [1e-5, 3e-5, 1e-4], "npo": [1e-5, 3e-5, 1e-4],
            # --set axis=nlr / axis=band: fewer locked units need a smaller step (guesses, same ratio).
            "nlr=0": [3e-5, 1e-4, 3e-4], "nlr=0.2": [3e-5, 1e-4, 3e-4], "nlr=0.5": [5e-5, 1.5e-4, 5e-4],
            "nlr=0.95": [3e-4, 1e-3, 3e-3], "default": [1e-4, 3e-4, 1e-3]},
    "seeds": [42, 43, 44],
    "nlrs": PRESETS["smollm2"]["nlrs"], "bands": PRESETS["smollm2"]["bands"],
    # The same starting model as `cku run` (aligned when smollm2 aligns; align.enabled=false = raw model).
    **({"align": PRESETS["smollm2"]["align"]} if "align" in PRESETS["smollm2"] else {}),
}


def preset(name: str) -> dict[str, Any]:
    from cku_core.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
