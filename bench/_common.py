"""Helpers shared by the benchmark scripts: the machine description and the results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("CKU_BENCH_RESULTS", REPO / "bench" / "results"))  # tests point it elsewhere
SMOLLM2_FOLDER = REPO / "artifacts" / "bench-model" / "smollm2-135m-instruct"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    """What the figures were measured on (written next to every result)."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "processor": platform.processor() or _cpu_model(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        with open("/proc/meminfo") as fh:
            info["mem_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """bench/results/<name>.json with the machine description added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**figures, "machine": machine()}, indent=2, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "pass" if ok else "MISS"


def load_model(tiny: bool):
    """A tiny random llama (smoke checks) or SmolLM2-135M-Instruct from the bench safetensors folder."""
    if tiny:
        from cku_core.tiny import tiny_model, tiny_tokenizer
        return tiny_model("llama", num_layers=8, hidden=64, d_ff=256), tiny_tokenizer()
    from cku_core.models import DEFAULT_MODEL, convert_gguf_to_safetensors, load_model_and_tokenizer, parse_model_spec
    if not SMOLLM2_FOLDER.exists():
        convert_gguf_to_safetensors(parse_model_spec(DEFAULT_MODEL).path, SMOLLM2_FOLDER)
    return load_model_and_tokenizer(str(SMOLLM2_FOLDER))
