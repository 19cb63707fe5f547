#!/usr/bin/env bash
# Stage 1 (feature alignment): train the projector on image-caption pairs, LLaVA-1.5's recipe.
#
#   bash scripts/pretrain.sh [extra trainer flags...]      # extra flags override the defaults
#
# Environment (LLaVA-1.5 defaults in brackets):
#   MODEL             language model [lmsys/vicuna-7b-v1.5]
#   VISION_TOWER      CLIP/SigLIP tower [openai/clip-vit-large-patch14-336]
#   DATA_PATH         captions: LLaVA JSON / JSONL, parquet, Arrow, a datasets folder or id [./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json]
#   DATA_MIXTURE      instead of DATA_PATH: sources with weights or counts, e.g.
#                     a.json:0.7,b.parquet:0.3,c.jsonl:2000 (drawn once from the seed) [unset]
#   IMAGE_FOLDER      image root [./playground/data/LLaVA-Pretrain/images]
#   OUTPUT_DIR        stage-1 checkpoint [./checkpoints/llava-v1.5-7b-pretrain]
#   NUM_GPUS          processes on this node [all visible GPUs; 1 without CUDA]
#   NNODES, NODE_RANK nodes of the run and this node's index, each node running this script
#                     [SLURM_NNODES, SLURM_NODEID; else 1, 0]
#   MASTER_ADDR, MASTER_PORT  rendezvous host and port, the same on every node [first host of
#                     SLURM_JOB_NODELIST and 20000 + SLURM_JOB_ID % 10000; else 127.0.0.1 and
#                     29500 (a random port in 29500-30499 on one node, so two runs can share it)]
#   HOSTFILE          DeepSpeed hostfile ("host slots=N" lines): the deepspeed launcher starts every
#                     node over ssh instead [unset]
#   SHUTDOWN_TIMEOUT  seconds torchrun lets the ranks save after a signal before killing them [300]
#   LAUNCHER_ARGS     more options for the launcher (torchrun's, or deepspeed's: "--launcher openmpi",
#                     "--no_ssh_check", "--include node1:0,1") [none]
#   ZERO              2 | 3 | 3_offload [2]
#   GLOBAL_BATCH      samples per optimizer step, kept by gradient accumulation [256]
#   PER_DEVICE_BATCH  samples per process per forward, lowered when the processes would overshoot
#                     GLOBAL_BATCH (2 nodes of 8: 16 per device) [32]
#   LR                learning rate [1e-3]
#   EPOCHS            [1]
#   MAX_LENGTH        model_max_length [2048]
#   TEMPLATE          conversation template [plain]
#   BITS              16 | 8 | 4: the (frozen) language model held in 8 or 4 bits (bitsandbytes) [16]
#   PACKING           1: pack each batch's samples into rows of MAX_LENGTH tokens, attention within
#                     each sample (no compute on padding; the same loss) [0]
#   ATTN              attention kernel: sdpa | eager | flash_attention_2 [transformers' choice]
#   SAVE_MINUTES      save a resumable checkpoint at least every this many minutes (besides --save_steps,
#                     keeping --save_total_limit 1), so a crash loses at most that much; 0: off [30]
#   REPORT_TO         experiment tracking: none | tensorboard | wandb | mlflow | ... (comma-separated, as
#                     transformers' --report_to; install the package first: pip install tensorboard) [none]
# Without CUDA the same command trains on the CPU (gloo, DeepSpeed's CPU accelerator, fp32).
# --dry_run prints the trainable parameters, batch arithmetic and a ZeRO-2/3 memory estimate and
# exits (no GPU, no weights read). SIGTERM / SIGINT / SIGUSR1 save a checkpoint and end the run
# with 128 + the signal; --resume_from_checkpoint auto continues it. scripts/slurm/: sbatch files.
set -euo pipefail
[ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ] && { sed -n '2,/^set -/p' "$0" | sed -e '/^set -/d' -e 's/^# \{0,1\}//'; exit 0; }

MODEL="${MODEL:-lmsys/vicuna-7b-v1.5}"
VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
DATA_PATH="${DATA_PATH:-./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json}"
[ -z "${IMAGE_FOLDER:-}" ] && [ -d ./playground/data/LLaVA-Pretrain/images ] && IMAGE_FOLDER=./playground/data/LLaVA-Pretrain/images
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-pretrain}"
ZERO="${ZERO:-2}"
GLOBAL_BATCH="${GLOBAL_BATCH:-256}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-32}"
LR="${LR:-1e-3}"
EPOCHS="${EPOCHS:-1}"
MAX_LENGTH="${MAX_LENGTH:-2048}"
TEMPLATE="${TEMPLATE:-plain}"
REPORT_TO="${REPORT_TO:-none}"
source "$(dirname "$0")/lib/launch.sh"
extra=()
[ "${PACKING:-0}" = "1" ] && extra+=(--packing True)
data=(--data_path "$DATA_PATH")
[ -n "${DATA_MIXTURE:-}" ] && data=(--data_mixture "$DATA_MIXTURE")
[ -n "${IMAGE_FOLDER:-}" ] && data+=(--image_folder "$IMAGE_FOLDER")
[ -n "${ATTN:-}" ] && extra+=(--attn_implementation "$ATTN")

run_training \
  --deepspeed "$DS_CONFIG" \
  --model_name_or_path "$MODEL" --vision_tower "$VISION_TOWER" \
  --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 \
  --template "$TEMPLATE" --stage 1 \
  --tune_vision_tower frozen --tune_mm_projector full --tune_language_model frozen \
  "${data[@]}" \
  --output_dir "$OUTPUT_DIR" --num_train_epochs "$EPOCHS" \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$GRAD_ACCUM" \
  --learning_rate "$LR" --weight_decay 0 --warmup_steps 0.03 --lr_scheduler_type cosine \
  --model_max_length "$MAX_LENGTH" --activation_checkpointing True \
  --save_strategy steps --save_steps 24000 --save_total_limit 1 --save_minutes "${SAVE_MINUTES:-30}" \
  --logging_steps 1 --dataloader_num_workers 4 --report_to "$REPORT_TO" \
  ${BITS:+--bits "$BITS"} "${extra[@]}" "$@"
