#!/usr/bin/env bash
# GPU benchmark (issue 7, target 6): CKU unlearning step time, MFU and peak memory, the deep-copy
# GradDiff+KL loop beside it, and generation tokens/s, for a Qwen2-1.5B-shaped model built from a
# config (random weights, fp32 storage, bf16 autocast). Sized to finish in about 2 minutes on one H200
# (a hard 290 s limit below). See bench/gpu_step.py for the FLOP formulas.
#
#   bash bench/gpu.sh                      # on the GPU machine; extra arguments go to bench/gpu_step.py
#   bash bench/gpu.sh --shape llama-1b     # Llama-3.2-1B shapes instead
#   bash bench/gpu.sh --tiny               # CPU smoke check (seconds)
#
# The GPU image has torch and transformers but not pydantic, which cku_core needs. Carry it as wheels
# (from the repository root, on a machine with pip access; the folder must be git-ignored, e.g. in
# .git/info/exclude, and named in the device call's `carry`):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
# This script installs them from $CKU_WHEELS (default .whl) into /tmp/site when pydantic is missing.
# Results: $OUT/gpu_step.json when $OUT is set (the device tool's output folder), else bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if ! "$PY" -c "import pydantic" 2>/dev/null; then
  wheels=${CKU_WHEELS:-.whl}
  if compgen -G "$wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "pydantic is not installed and no wheels are in $wheels: see the header of $0" >&2
    exit 2
  fi
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"

args=("$@")
if [[ " ${args[*]-} " != *" --out "* && -n "${OUT:-}" ]]; then
  name=gpu_step.json
  [[ " ${args[*]-} " == *" --tiny "* ]] && name=gpu_step_tiny.json
  args+=(--out "$OUT/$name")
fi
timeout 290 "$PY" bench/gpu_step.py "${args[@]}"
