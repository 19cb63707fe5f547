#!/usr/bin/env bash
# Chat with trained checkpoints in a browser: one process, Gradio.
#
#   bash scripts/web.sh --model runs/quickstart/stage2                  # then open the printed URL
#   bash scripts/web.sh --model runs/lora/stage2 --model runs/moslora/stage2   # answers side by side
#
# Every flag goes to `llava-moslora web` (see `--help`): --host (127.0.0.1; 0.0.0.0 for other
# machines), --port (7860), --share, --device (auto: CUDA when present), --dtype (auto), --examples.
# On a cluster node: start it there, then from your laptop `ssh -L 7860:localhost:7860 NODE` and
# open http://localhost:7860.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PY" ] || PY=python
# The quickstart's held-out images as examples, unless --examples says otherwise (test_* sort first).
examples=()
if [[ " $* " != *" --examples "* && -d "$root/runs/quickstart/data/images" ]]; then
  examples=(--examples "$root/runs/quickstart/data/images")
fi
exec "$PY" -m llava_moslora web "${examples[@]}" "$@"
