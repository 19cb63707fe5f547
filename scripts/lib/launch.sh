# Shared by scripts/pretrain.sh and scripts/finetune.sh (sourced, not run).
# Builds the launcher (torchrun on one node, the deepspeed launcher with a hostfile), the
# precision flags (bf16 + tf32 on GPUs, nothing on CPU) and the gradient accumulation that keeps
# GLOBAL_BATCH constant whatever the number of GPUs. Sets: LAUNCH (array), PRECISION (array),
# WORLD, GRAD_ACCUM, DS_CONFIG.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3


if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L | wc -l)
  PRECISION=(--bf16 True --tf32 True)
else
  gpus=1
  PRECISION=()
fi
NUM_GPUS="${NUM_GPUS:-$gpus}"
# torchrun sets 1 thread per process anyway, with a banner; saying so ourselves keeps it quiet.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PORT="${MASTER_PORT:-$(( 29500 + RANDOM % 1000 ))}"

if [ -n "${HOSTFILE:-}" ]; then
  [ -f "$HOSTFILE" ] || { echo "HOSTFILE=$HOSTFILE not found" >&2; exit 2; }
  # "host slots=N" lines: the world is the sum of the slots
  WORLD=$(awk '/slots=/ {split($2, a, "="); s += a[2]} END {print s + 0}' "$HOSTFILE")
  [ "$WORLD" -gt 0 ] || { echo "HOSTFILE=$HOSTFILE has no 'host slots=N' lines" >&2; exit 2; }
  LAUNCH=("$(dirname "$PYTHON")/deepspeed" --hostfile "$HOSTFILE" --master_port "$PORT" --module llava_moslora.train)
else
  WORLD="$NUM_GPUS"
  LAUNCH=("$PYTHON" -m torch.distributed.run --nproc_per_node "$NUM_GPUS" --master_port "$PORT" -m llava_moslora.train)
fi

per_step=$(( PER_DEVICE_BATCH * WORLD ))
if [ $(( GLOBAL_BATCH % per_step )) -ne 0 ]; then
  echo "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of PER_DEVICE_BATCH=$PER_DEVICE_BATCH x $WORLD processes" >&2
  exit 2
fi
GRAD_ACCUM=$(( GLOBAL_BATCH / per_step ))
case "${ZERO}" in
  2) DS_CONFIG="$root/deepspeed_configs/zero2.json" ;;
  3) DS_CONFIG="$root/deepspeed_configs/zero3.json" ;;
  3_offload) DS_CONFIG="$root/deepspeed_configs/zero3_offload.json" ;;
  *) echo "ZERO must be 2, 3 or 3_offload, got '$ZERO'" >&2; exit 2 ;;
esac
echo "launch: $WORLD process(es), per-device batch $PER_DEVICE_BATCH x accumulation $GRAD_ACCUM = global batch $GLOBAL_BATCH, ZeRO-$ZERO"
