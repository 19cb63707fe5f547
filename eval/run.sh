#!/usr/bin/env bash
# Evaluate one checkpoint on a benchmark suite and print its per-ability table.
#
#   bash eval/run.sh CHECKPOINT [SUITE_OR_NAMES] [WORK_DIR]
#
# SUITE_OR_NAMES: a suite (moslora-paper, quick, shapes, shapes_val: llava_moslora/evaluation/suites/) or comma-separated VLMEvalKit
# names [moslora-paper]. WORK_DIR defaults to eval_results/<checkpoint name> (one per checkpoint).
# With several GPUs, NUM_GPUS=8 runs VLMEvalKit's data-parallel inference under torchrun.
# Extra flags for `llava-moslora eval` go in EVAL_ARGS (e.g. "--data-root DIR --backend builtin").
# BATCH_SIZE: rows per generation [16] (the answers equal one-at-a-time ones).
# EVAL_TIMEOUT_MINUTES: how long ranks wait for each other at a collective [180] (rank 0 scores
# with judges while the others wait; NCCL's own default of 10 minutes would abort the run).
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,/^set -/p' "$0" | sed -e '/^set -/d' -e 's/^# \{0,1\}//'; exit $(( $# < 1 ? 2 : 0 ))
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PY" ] || PY=python
model="$1"; suite="${2:-moslora-paper}"; work="${3:-eval_results/$(basename "$model")}"
if [ "${NUM_GPUS:-1}" -gt 1 ]; then
  launch=("$PY" -m torch.distributed.run --nproc_per_node "$NUM_GPUS" -m llava_moslora)
else
  launch=("$PY" -m llava_moslora)
fi
# shellcheck disable=SC2086
"${launch[@]}" eval --model "$model" --benchmarks "$suite" --work-dir "$work" --batch-size "${BATCH_SIZE:-16}" ${EVAL_ARGS:-}
"$PY" -m llava_moslora abilities "$work" --out "$work/abilities"
