#!/usr/bin/env bash
# Every measurement that needs a GPU, in <= 8 minutes on one GPU; one JSON and one Markdown summary.
#
#   bash benchmarks/gpu_check.sh                     # on a GPU: gpu_check/summary.{json,md}
#   bash benchmarks/gpu_check.sh --cpu-smoke         # tiny sizes on the CPU (the test suite runs this)
#   bash benchmarks/gpu_check.sh --only packing --out /tmp/check
#
# Checks: a stage-2 step at LLaVA-7B shapes (tokens/s, MFU, Riemannian overhead); --packing
# against padding (parity, tokens/s; flash_attention_2 where installed); batched evaluation
# against batch 1 (bf16); a QLoRA step on bitsandbytes' CUDA kernels. See benchmarks/gpu_check.py.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-$root/.venv/bin/python}" "$root/benchmarks/gpu_check.py" "$@"
