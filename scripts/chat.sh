#!/usr/bin/env bash
# Chat with a trained checkpoint (stage checkpoint or merged directory) about an image.
#
#   bash scripts/chat.sh --model runs/quickstart/stage2 --image runs/quickstart/data/images/test_000000.png
#   bash scripts/chat.sh --model DIR --image IMG --prompt "How many shapes are there?"   # answer and exit
#
# Every flag goes to `llava-moslora chat` (see `--help`): --temperature (0 = greedy), --top_p,
# --max_new_tokens, --device (auto: CUDA when present), --dtype (auto), --stats.
# In the conversation: /image PATH, /reset, /exit (or end of input).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PY" ] || PY=python
exec "$PY" -m llava_moslora chat "$@"
