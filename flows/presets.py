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
        "data": {"n_forget": 32, "n_eval_harmful": 12, "n_scoring": 32, "n_eval_benign": 16},
        "scoring": {"n_samples": 32, "batch_size": 8, "max_length": 256},
        # lr 1e-3: with NLR 0.8 only 20% of the band's units move, so CKU needs a larger step than
        # full-band GA to forget as much (calibrated on this model: held-out harmful NLL 1.26 -> ~1.9).
        "unlearn": {"lr": 1e-3, "steps": 16, "batch_size": 4, "max_length": 256},
        # Every attack family; the persona family uses the short DAN template (the PyRIT AIM one is
        # ~450 tokens, which triples the cost of a CPU evaluation). Full suite: evaluation.attacks.
        "evaluation": {"attacks": ["direct", "prefix_injection", "refusal_suppression", "persona_short",
                                   "nested_fiction", "json_wrapper", "base64", "prefill_sure", "decoding_grid"],
                       "n_eval_prompts": 10, "n_over_refusal": 12, "n_benign": 16, "n_mc": 32,
                       "max_new_tokens": 32, "batch_size": 16, "decoding_grid": [{"temperature": 1.0, "top_k": 20}]},
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


def preset(name: str) -> dict[str, Any]:
    from cku_core.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
