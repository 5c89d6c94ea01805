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
    "smollm2": {},
}


def preset(name: str) -> dict[str, Any]:
    from cku_core.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
