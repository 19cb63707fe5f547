# Shared by scripts/pretrain.sh and scripts/finetune.sh (sourced, not run).
# Builds the launcher and the gradient accumulation that keeps GLOBAL_BATCH constant whatever the
# number of GPUs and nodes (each rank picks its precision itself: train/main.py). Sets:
# LAUNCH (array), WORLD, GRAD_ACCUM, DS_CONFIG; defines run_training, which
# checks the arguments (llava_moslora.train.preflight: missing paths, unknown values, an output
# folder holding another run; one line each and exit 2, before any process starts) and execs LAUNCH.
#
# Launchers: torchrun (through llava_moslora.train.launch, which adds SLURM's USR1 warning and
# exits 128+signal when preempted) on one node, or on each of NNODES nodes with a static
# rendezvous at MASTER_ADDR:MASTER_PORT; or the deepspeed launcher with a HOSTFILE (ssh/pdsh).
# Under SLURM the node variables default to the job's (SLURM_NNODES, SLURM_NODEID, the first
# host of SLURM_JOB_NODELIST, a port derived from SLURM_JOB_ID), so `srun bash scripts/...`
# with one task per node needs nothing else.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3


first_host() {  # the first host of a SLURM node list: "gpu[03-04,07],cpu1" -> gpu03
  if command -v scontrol >/dev/null 2>&1; then scontrol show hostnames "$1" | head -n 1; return; fi
  local head="${1%%,*}"
  if [[ "$head" == *"["* ]]; then
    local rest="${1#*[}"
    echo "${1%%[*}${rest%%[-,\]]*}"
  else
    echo "$head"
  fi
}

# GPUs this node's ranks can use; the precision is each rank's own choice (train/main.py: bf16 and
# tf32 where its GPU has them, fp16 on older ones, fp32 without CUDA), not this shell's, which may
# run on a login node without GPUs or of another kind.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then  # what SLURM / the container lets this job see
    gpus=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
  else
    gpus=$(nvidia-smi -L | grep -c '^GPU ')  # not the indented MIG lines under a GPU
  fi
else
  gpus=1
fi
NUM_GPUS="${NUM_GPUS:-$gpus}"
NNODES="${NNODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${NODE_RANK:-${SLURM_NODEID:-0}}"
given_master="${MASTER_ADDR:-}"
if [ -z "${MASTER_ADDR:-}" ]; then
  if [ -n "${SLURM_JOB_NODELIST:-}" ]; then MASTER_ADDR="$(first_host "$SLURM_JOB_NODELIST")"; else MASTER_ADDR=127.0.0.1; fi
fi
if [ -n "${MASTER_PORT:-}" ]; then PORT="$MASTER_PORT"
elif [ -n "${SLURM_JOB_ID:-}" ]; then PORT=$(( 20000 + SLURM_JOB_ID % 10000 ))  # the same on every node
elif [ "$NNODES" -gt 1 ]; then PORT=29500
else PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # one node: a port the system has free, so two runs side by side do not collide
fi
# torchrun sets 1 thread per process anyway, with a banner; saying so ourselves keeps it quiet.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ -n "${HOSTFILE:-}" ]; then
  [ "$NNODES" -eq 1 ] || { echo "HOSTFILE and NNODES=$NNODES: choose one (the deepspeed launcher starts every node from the hostfile; NNODES runs torchrun on each node)" >&2; exit 2; }
  [ -f "$HOSTFILE" ] || { echo "HOSTFILE=$HOSTFILE not found" >&2; exit 2; }
  # "host slots=N" lines: the world is the sum of the slots
  WORLD=$(awk '/slots=/ {split($2, a, "="); s += a[2]} END {print s + 0}' "$HOSTFILE")
  [ "$WORLD" -gt 0 ] || { echo "HOSTFILE=$HOSTFILE has no 'host slots=N' lines" >&2; exit 2; }
  # the rendezvous host: MASTER_ADDR when given, this machine for a localhost hostfile, else
  # the deepspeed launcher asks the first host over ssh
  first=$(awk '/slots=/ {print $1; exit}' "$HOSTFILE")
  case "$first" in localhost|127.0.0.1) given_master="${given_master:-127.0.0.1}" ;; esac
  LAUNCH=("$(dirname "$PYTHON")/deepspeed" --hostfile "$HOSTFILE" ${given_master:+--master_addr "$given_master"}
          --master_port "$PORT" ${LAUNCHER_ARGS:-} --module llava_moslora.train)
else
  [ "$NODE_RANK" -ge 0 ] && [ "$NODE_RANK" -lt "$NNODES" ] || { echo "NODE_RANK=$NODE_RANK must be in 0..$(( NNODES - 1 )) (NNODES=$NNODES)" >&2; exit 2; }
  WORLD=$(( NNODES * NUM_GPUS ))
  LAUNCH=("$PYTHON" -m llava_moslora.train.launch --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NUM_GPUS"
          --master_addr "$MASTER_ADDR" --master_port "$PORT" ${SHUTDOWN_TIMEOUT:+--shutdown_timeout "$SHUTDOWN_TIMEOUT"}
          ${LAUNCHER_ARGS:-} -m llava_moslora.train)
fi

# --dry_run: one process on this machine (no GPU needed), told the world the run would have
# (read as the trainer reads its flags: every spelling HfArgumentParser takes, train/preflight.py)
dry_run=$("$PYTHON" -c 'import sys; from llava_moslora.train.preflight import flag_is_on
print(int(flag_is_on(sys.argv[1:], "--dry_run")))' "$@")
if [ "$dry_run" = "1" ]; then
  LAUNCH=("$PYTHON" -m llava_moslora.train --dry_run_world "$WORLD")
fi

# The global batch is the recipe's (LLaVA's 256 / 128); the per-device batch only bounds memory. So
# when more processes than the recipe's node would overshoot it (2 nodes of 8 at 16 per device make
# 256), each process takes a smaller batch instead: never more memory, the same optimizer steps.
lowered=""
if [ $(( PER_DEVICE_BATCH * WORLD )) -gt "$GLOBAL_BATCH" ] && [ $(( GLOBAL_BATCH % WORLD )) -eq 0 ]; then
  lowered=" (lowered from $PER_DEVICE_BATCH: $WORLD processes x $PER_DEVICE_BATCH would overshoot it)"
  PER_DEVICE_BATCH=$(( GLOBAL_BATCH / WORLD ))
fi
per_step=$(( PER_DEVICE_BATCH * WORLD ))
if [ $(( GLOBAL_BATCH % per_step )) -ne 0 ]; then
  echo "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of PER_DEVICE_BATCH=$PER_DEVICE_BATCH x $WORLD processes;" \
       "set PER_DEVICE_BATCH to a divisor of GLOBAL_BATCH / $WORLD, or GLOBAL_BATCH to a multiple of $per_step" >&2
  exit 2
fi
GRAD_ACCUM=$(( GLOBAL_BATCH / per_step ))
case "${ZERO}" in
  2) DS_CONFIG="$root/deepspeed_configs/zero2.json" ;;
  3) DS_CONFIG="$root/deepspeed_configs/zero3.json" ;;
  3_offload) DS_CONFIG="$root/deepspeed_configs/zero3_offload.json" ;;
  *) echo "ZERO must be 2, 3 or 3_offload, got '$ZERO'" >&2; exit 2 ;;
esac
nodes=""
[ "$NNODES" -gt 1 ] && nodes="node $NODE_RANK of $NNODES (rendezvous $MASTER_ADDR:$PORT), "
echo "launch: ${nodes}$WORLD process(es), per-device batch $PER_DEVICE_BATCH x accumulation $GRAD_ACCUM = global batch $GLOBAL_BATCH$lowered, ZeRO-$ZERO"

# flag -> the variable that gave it, for preflight's messages ("DATA_PATH=... (--data_path): ...")
export LLAVA_MOSLORA_VARIABLES="--data_path=DATA_PATH,--data_mixture=DATA_MIXTURE,--image_folder=IMAGE_FOLDER,\
--pretrain_mm_mlp_adapter=STAGE1_DIR,--model_name_or_path=MODEL,--vision_tower=VISION_TOWER,--adapter=ADAPTER,\
--template=TEMPLATE,--output_dir=OUTPUT_DIR,--report_to=REPORT_TO"
# The CPUs this node's ranks share (the launcher's affinity, which they inherit: under SLURM what
# srun's --cpus-per-task gave the step), and a warning when the ranks and their data workers
# outnumber them.
cpu_report() {
  local cpus workers=0 previous="" arg
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # its affinity (nproc reads OMP_NUM_THREADS too)
  for arg in "$@"; do
    [ "$previous" = "--dataloader_num_workers" ] && workers="$arg"
    case "$arg" in --dataloader_num_workers=*) workers="${arg#*=}" ;; esac
    previous="$arg"
  done
  local wanted=$(( NUM_GPUS * (1 + workers) ))
  echo "launch: $cpus CPUs for this node's $NUM_GPUS rank(s), each with $workers data worker(s)"
  if [ "$wanted" -gt "$cpus" ]; then
    echo "launch: warning: $NUM_GPUS rank(s) x (1 + $workers workers) = $wanted processes share $cpus CPUs;" \
         "give the job more (SLURM: --cpus-per-task, passed on to srun) or lower --dataloader_num_workers" >&2
  fi
}
run_training() {
  "$PYTHON" -m llava_moslora.train.preflight "$@" || exit 2
  [ "$dry_run" = "1" ] || cpu_report "$@"
  exec "${LAUNCH[@]}" "$@"
}
