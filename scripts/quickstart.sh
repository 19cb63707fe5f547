#!/usr/bin/env bash
# The embedded default, end to end on a laptop CPU: ShapesVQA data, tiny base models, stage 1
# and stage 2 (MoSLoRA) through the same launch scripts a cluster uses (2 processes, DeepSpeed
# ZeRO-2), then evaluation on the held-out ShapesVQA benchmarks and two sample answers.
#
#   bash scripts/quickstart.sh [--out DIR]          # default DIR: runs/quickstart (git ignores runs/)
#
# Environment: NUM_GPUS [2 processes], STAGE1_EPOCHS, STAGE2_EPOCHS, NUM_PRETRAIN, NUM_INSTRUCT,
# NUM_TEST override the recipe below. Running it twice starts over in the same directory.
#
# Why the recipe differs from LLaVA's: the tiny language model starts from random weights, so it
# has no language to align to. Stage 1 therefore trains the LLM fully together with the projector
# (LLaVA trains only the projector), on the captions and the instructions, so that the words and
# letters of the answers exist in its embeddings and output layer (adapters cannot add them);
# stage 2 then tunes it with MoSLoRA adapters as LLaVA-1.5 would tune Vicuna.
# The bases (init-tiny defaults) were sized by probes on this data: 64x64 images in 16x16 patches
# (16 image tokens; 64 tokens of 8x8 patches learned colour and counting worse and ran 2x slower),
# and a 4-layer LLM (2 layers never learned to map an answer to its option letter). Multiple
# choice is 80% of the training questions (synth default) because that mapping is learned last.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$root/runs/quickstart"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$(realpath -m "$2")"; shift 2 ;;
    -h|--help) sed -n '2,/^set -/p' "$0" | sed -e '/^set -/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$root"
bash scripts/setup.sh
PY="$root/.venv/bin/python"
CLI=("$PY" -m llava_moslora)
start=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT"

"${CLI[@]}" synth --out "$OUT/data" --num_pretrain "${NUM_PRETRAIN:-2000}" --num_instruct "${NUM_INSTRUCT:-8000}" \
  --num_test "${NUM_TEST:-400}"
"${CLI[@]}" init-tiny --data "$OUT/data" --out "$OUT/base"

export NUM_GPUS="${NUM_GPUS:-2}" ZERO=2
MODEL="$OUT/base/llm" VISION_TOWER="$OUT/base/vision" DATA_PATH="$OUT/data/pretrain.json,$OUT/data/instruct.json" \
IMAGE_FOLDER="$OUT/data/images" OUTPUT_DIR="$OUT/stage1" GLOBAL_BATCH=32 PER_DEVICE_BATCH=16 \
LR=2e-3 EPOCHS="${STAGE1_EPOCHS:-1}" TEMPLATE=vicuna_v1 \
  bash scripts/pretrain.sh --tune_language_model full --gradient_checkpointing False \
    --dataloader_num_workers 0 --model_max_length 256 --save_strategy no --logging_steps 10

STAGE1_DIR="$OUT/stage1" DATA_PATH="$OUT/data/instruct.json" IMAGE_FOLDER="$OUT/data/images" \
OUTPUT_DIR="$OUT/stage2" ADAPTER=moslora GLOBAL_BATCH=32 PER_DEVICE_BATCH=16 LR=2e-3 MM_PROJECTOR_LR=2e-3 \
LORA_R=32 LORA_ALPHA=64 LORA_DROPOUT=0 EPOCHS="${STAGE2_EPOCHS:-3}" \
  bash scripts/finetune.sh --gradient_checkpointing False --dataloader_num_workers 0 --model_max_length 256 \
    --save_strategy no --logging_steps 10

# Held-out ShapesVQA through the evaluation room (builtin backend unless vlmeval is installed),
# then the per-ability table (scores on 0-100; normalized is relative to the best checkpoint,
# here the only one) and two sample answers from the chat command.
"${CLI[@]}" eval --model "$OUT/stage2" --benchmarks shapes --data-root "$OUT/data" --work-dir "$OUT/eval/stage2"
"${CLI[@]}" abilities "$OUT/eval/stage2" --out "$OUT/eval/abilities"
sample="$OUT/data/images/test_000000.png"
echo; echo "Sample answers about $sample (bash scripts/chat.sh --model $OUT/stage2 --image $sample to ask more):"
for question in "How many shapes are in the image?" "Describe the image."; do
  answer="$("${CLI[@]}" chat --model "$OUT/stage2" --image "$sample" --prompt "$question" --max_new_tokens 48 \
    2>>"$OUT/chat.log")"  # loading messages go to the log; a failure still stops the script
  echo "  Q: $question"; echo "  A: $answer"
done
echo "quickstart: done in $(( $(date +%s) - start )) s; everything is under $OUT"
