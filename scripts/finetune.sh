#!/usr/bin/env bash
# Stage 2 (visual instruction tuning): adapters on the language model, projector fully trained,
# from a stage-1 checkpoint. LLaVA-1.5's LoRA recipe with the adapter of your choice.
#
#   ADAPTER=moslora bash scripts/finetune.sh [extra trainer flags...]   # extras override defaults
#
# Environment (defaults in brackets):
#   ADAPTER           lora | moslora | moelora [moslora]
#   STAGE1_DIR        stage-1 checkpoint, LLaVA's mm_projector.bin, or a trained llava-hf LLaVA (hub id
#                     or folder) [./checkpoints/llava-v1.5-7b-pretrain]
#   MODEL             language model [from the stage-1 checkpoint's recipe; lmsys/vicuna-7b-v1.5 with
#                     an mm_projector file]. Set it to point at moved base weights.
#   VISION_TOWER      vision tower, likewise [openai/clip-vit-large-patch14-336 with a projector file]
#   DATA_PATH         instructions: LLaVA JSON / JSONL, parquet, Arrow, a datasets folder or id; images as
#                     paths under IMAGE_FOLDER or stored inside; several per sample [./playground/data/llava_v1_5_mix665k.json]
#   DATA_MIXTURE      instead of DATA_PATH: sources with weights or counts, e.g.
#                     a.json:0.7,b.parquet:0.3,c.jsonl:2000 (drawn once from the seed) [unset]
#   IMAGE_FOLDER      root of the image paths (unused by images stored in the data) [./playground/data]
#   OUTPUT_DIR        stage-2 checkpoint [./checkpoints/llava-v1.5-7b-$ADAPTER]
#   NUM_GPUS, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, HOSTFILE, SHUTDOWN_TIMEOUT, LAUNCHER_ARGS, ZERO [2],
#   GLOBAL_BATCH [128], PER_DEVICE_BATCH [16], EPOCHS [1], MAX_LENGTH [2048]: as in scripts/pretrain.sh
#   (--dry_run, signals and resuming too)
#   LR [2e-4], MM_PROJECTOR_LR [2e-5], LORA_DROPOUT [0.05]
#   LORA_R, LORA_ALPHA  rank and scale numerator; for moelora per expert [128, 256; moelora 4, 16]
#   MIXER_INIT        MoSLoRA mixer init [kaiming]
#   NUM_EXPERTS [20], TOP_K [10], GATE_RESCALE [none|sqrt], ROUTER_LR [unset]: MoE-LoRA (the
#                     defaults are its paper's: 20 experts of rank 4, 10 routed per token)
#   RIEMANNIAN        1: Riemannian preconditioning (needs ZERO=2) [0]
#   BITS              16 | 8 | 4: QLoRA, the language model held in 8 or 4 bits (bitsandbytes;
#                     ZERO=2 or one GPU; --quant_type nf4|fp4, --double_quant) [16]
#   TEMPLATE          [vicuna_v1]
#   PACKING           1: pack each batch's samples into rows of MAX_LENGTH tokens, attention within
#                     each sample (no compute on padding; the same loss) [0]
#   ATTN              attention kernel: sdpa | eager | flash_attention_2 [transformers' choice]
#   SAVE_MINUTES      save a resumable checkpoint at least every this many minutes (besides --save_steps,
#                     keeping --save_total_limit 1), so a crash loses at most that much; 0: off [30]
#   REPORT_TO         experiment tracking: none | tensorboard | wandb | mlflow | ... (comma-separated, as
#                     transformers' --report_to; install the package first: pip install tensorboard) [none]
set -euo pipefail
[ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ] && { sed -n '2,/^set -/p' "$0" | sed -e '/^set -/d' -e 's/^# \{0,1\}//'; exit 0; }

ADAPTER="${ADAPTER:-moslora}"
STAGE1_DIR="${STAGE1_DIR:-./checkpoints/llava-v1.5-7b-pretrain}"
if [ -f "$STAGE1_DIR" ]; then  # a projector file: the bases must be named
  MODEL="${MODEL:-lmsys/vicuna-7b-v1.5}"
  VISION_TOWER="${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
fi
DATA_PATH="${DATA_PATH:-./playground/data/llava_v1_5_mix665k.json}"
[ -z "${IMAGE_FOLDER:-}" ] && [ -d ./playground/data ] && IMAGE_FOLDER=./playground/data
OUTPUT_DIR="${OUTPUT_DIR:-./checkpoints/llava-v1.5-7b-$ADAPTER}"
ZERO="${ZERO:-2}"
GLOBAL_BATCH="${GLOBAL_BATCH:-128}"
PER_DEVICE_BATCH="${PER_DEVICE_BATCH:-16}"
EPOCHS="${EPOCHS:-1}"
MAX_LENGTH="${MAX_LENGTH:-2048}"
LR="${LR:-2e-4}"
MM_PROJECTOR_LR="${MM_PROJECTOR_LR:-2e-5}"
# LLaVA-1.5's LoRA is rank 128. MoE-LoRA's rank is per expert: its paper's 20 experts of rank 4 hold
# 80 rank rows per layer (plus a 20 x d_in router) against LoRA's 128; 20 of rank 128 would hold 2,560.
if [ "$ADAPTER" = moelora ]; then
  LORA_R="${LORA_R:-4}"; LORA_ALPHA="${LORA_ALPHA:-16}"
else
  LORA_R="${LORA_R:-128}"; LORA_ALPHA="${LORA_ALPHA:-256}"
fi
LORA_DROPOUT="${LORA_DROPOUT:-0.05}"
MIXER_INIT="${MIXER_INIT:-kaiming}"
NUM_EXPERTS="${NUM_EXPERTS:-20}"
TOP_K="${TOP_K:-10}"
GATE_RESCALE="${GATE_RESCALE:-none}"
TEMPLATE="${TEMPLATE:-vicuna_v1}"
REPORT_TO="${REPORT_TO:-none}"
source "$(dirname "$0")/lib/launch.sh"

extra=()
[ -n "${MODEL:-}" ] && extra+=(--model_name_or_path "$MODEL")
[ -n "${VISION_TOWER:-}" ] && extra+=(--vision_tower "$VISION_TOWER")
[ -n "${ROUTER_LR:-}" ] && extra+=(--router_lr "$ROUTER_LR")
[ "${RIEMANNIAN:-0}" = "1" ] && extra+=(--riemannian True)
[ "${BITS:-16}" != "16" ] && extra+=(--bits "$BITS")
[ "${PACKING:-0}" = "1" ] && extra+=(--packing True)
data=(--data_path "$DATA_PATH")
[ -n "${DATA_MIXTURE:-}" ] && data=(--data_mixture "$DATA_MIXTURE")
[ -n "${IMAGE_FOLDER:-}" ] && data+=(--image_folder "$IMAGE_FOLDER")
[ -n "${ATTN:-}" ] && extra+=(--attn_implementation "$ATTN")

run_training \
  --deepspeed "$DS_CONFIG" \
  --pretrain_mm_mlp_adapter "$STAGE1_DIR" \
  --template "$TEMPLATE" --stage 2 \
  --tune_vision_tower frozen --tune_mm_projector full --tune_language_model adapter \
  --adapter "$ADAPTER" --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" --lora_dropout "$LORA_DROPOUT" \
  --mixer_init "$MIXER_INIT" --num_experts "$NUM_EXPERTS" --top_k "$TOP_K" --gate_rescale "$GATE_RESCALE" \
  "${data[@]}" \
  --output_dir "$OUTPUT_DIR" --num_train_epochs "$EPOCHS" \
  --per_device_train_batch_size "$PER_DEVICE_BATCH" --gradient_accumulation_steps "$GRAD_ACCUM" \
  --learning_rate "$LR" --mm_projector_lr "$MM_PROJECTOR_LR" --weight_decay 0 --warmup_steps 0.03 \
  --lr_scheduler_type cosine --group_by_modality_length True \
  --model_max_length "$MAX_LENGTH" --activation_checkpointing True \
  --save_strategy steps --save_steps 50000 --save_total_limit 1 --save_minutes "${SAVE_MINUTES:-30}" \
  --logging_steps 1 --dataloader_num_workers 4 --report_to "$REPORT_TO" \
  "${extra[@]}" "$@"
