#!/usr/bin/env bash
# Compare adapters (llava-moslora study): from one stage-1 checkpoint, stage 2 for every variant of
# a grid through scripts/finetune.sh (DeepSpeed, every GPU of the node, or HOSTFILE's nodes), each
# scored on the grid's benchmarks, then a report under OUT/report. Run it again to resume.
#
#   bash scripts/study.sh [extra llava-moslora study flags...]
#
# Environment (defaults in brackets):
#   GRID        the grid file [studies/shapes.yaml]; LLaVA-1.5's recipe: studies/llava15.yaml; the papers'
#               own: studies/moslora-llama3.yaml, moslora-internlm2-qlora.yaml, moelora-llava15[-vmcbench].yaml
#   OUT         study folder [runs/study; with QUICK=1 runs/study-quick]
#   QUICK       1: the grid's quick overrides (a first look) [0]
#   SEEDS       comma-separated seeds instead of the grid's
#   VARIANTS    comma-separated variants to run (the reference variant is always kept)
#   STAGE1_DIR  stage-1 checkpoint instead of the grid's
#   NUM_GPUS, HOSTFILE, ZERO, GLOBAL_BATCH, PER_DEVICE_BATCH, MODEL, VISION_TOWER: passed on to
#               scripts/finetune.sh, over the grid's `launch:` defaults
set -euo pipefail
[ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ] && { sed -n '2,/^set -/p' "$0" | sed -e '/^set -/d' -e 's/^# \{0,1\}//'; exit 0; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PYTHON" ] || { bash "$root/scripts/setup.sh"; PYTHON="$root/.venv/bin/python"; }
args=(--grid "${GRID:-$root/studies/shapes.yaml}")
if [ "${QUICK:-0}" = "1" ]; then
  args+=(--quick --out "${OUT:-$root/runs/study-quick}")
else
  args+=(--out "${OUT:-$root/runs/study}")
fi
[ -n "${SEEDS:-}" ] && args+=(--seeds "$SEEDS")
[ -n "${VARIANTS:-}" ] && args+=(--variants "$VARIANTS")
[ -n "${STAGE1_DIR:-}" ] && args+=(--stage1 "$STAGE1_DIR")
exec "$PYTHON" -m llava_moslora study "${args[@]}" "$@"
