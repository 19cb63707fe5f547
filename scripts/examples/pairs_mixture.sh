#!/usr/bin/env bash
# After the quickstart: the data forms users bring, end to end on its model.
#   bash scripts/examples/pairs_mixture.sh [QUICKSTART_DIR [OUT]]   (defaults: runs/quickstart runs/pairs)
# 1. merges the quickstart's stage-2 checkpoint into a llava-hf directory;
# 2. writes the quickstart's ShapesVQA again (same seed and sizes: the same files) plus 2,000
#    two-image "Which image has more shapes?" samples and a 400-row two-image benchmark;
# 3. converts pairs + instructions to one parquet file (messages + images, images inside);
# 4. scores the quickstart model on the two-image benchmark, then fine-tunes the merged model on
#    a 0.7 / 0.3 mixture of the parquet and the original JSON (MoSLoRA r=32, the quickstart's
#    settings) and scores it on all three benchmarks;
# 5. asks it about two held-out images in chat.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
Q="${1:-runs/quickstart}" W="${2:-runs/pairs}"
CLI=("$root/.venv/bin/llava-moslora")
[ -f "$Q/stage2/llava_moslora.json" ] || { echo "no quickstart checkpoint at $Q/stage2: run bash scripts/quickstart.sh first" >&2; exit 2; }
"${CLI[@]}" merge --checkpoint "$Q/stage2" --out "$W/merged"
"${CLI[@]}" synth --out "$W/data" --seed 0 --num_pretrain 2000 --num_instruct 8000 --num_test 400 --num_pairs 2000
"${CLI[@]}" convert-data --data_path "$W/data/pairs.json,$W/data/instruct.json" --image_folder "$W/data/images" \
  --out "$W/shapes.parquet"
"${CLI[@]}" eval --model "$Q/stage2" --benchmarks ShapesVQA_Pairs --data-root "$W/data" --work-dir "$W/eval/before"
STAGE1_DIR="$W/merged" DATA_MIXTURE="$W/shapes.parquet:0.7,$W/data/instruct.json:0.3" IMAGE_FOLDER="$W/data/images" \
OUTPUT_DIR="$W/stage2" ADAPTER=moslora LR=2e-3 MM_PROJECTOR_LR=2e-3 LORA_R=32 LORA_ALPHA=64 LORA_DROPOUT=0 \
NUM_GPUS="${NUM_GPUS:-2}" ZERO=2 GLOBAL_BATCH=32 PER_DEVICE_BATCH=16 \
  bash scripts/finetune.sh --activation_checkpointing False --dataloader_num_workers 0 --model_max_length 256 \
  --save_strategy no --logging_steps 10 --seed 0 --data_seed 0
"${CLI[@]}" eval --model "$W/stage2" --benchmarks ShapesVQA_MCQ,ShapesVQA_YN,ShapesVQA_Pairs --data-root "$W/data" \
  --work-dir "$W/eval/after"
question=$'Which image has more shapes?\nA. the first image\nB. the second image\nAnswer with the option\'s letter from the given choices directly.'
"${CLI[@]}" chat --model "$W/stage2" --image "$W/data/images/test_000002.png" --image "$W/data/images/test_000007.png" \
  --prompt "$question"   # 4 shapes vs 2: A
