"""MoE-LoRA's load-balancing term weighs the same whatever the accumulation and the number of
processes: one optimizer step of 8 identical samples as 1 process x 8, 1 x 1 with accumulation 8,
and 2 processes x 4 moves every trained tensor alike, through finetune.sh with
--load_balance_coef > 0 and plain SGD (whose step is the gradient itself, where Adam's first step
would hide a scale). Across processes the Trainer multiplies the language-model loss by their
number (transformers 5.23, Trainer.compute_loss with average_tokens_across_devices) because it is
normalized by the tokens of all of them, and DeepSpeed averages the gradients: the term added
after it is averaged as it should be, which the 2-process run shows."""
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from helpers import run_script

pytestmark = pytest.mark.slow


# Slowest ten of the suite on two workers: ~19 s alone. Three one-step launches, one per layout: the layouts
# differ only in how the Trainer and DeepSpeed split the batch, so nothing short of a launch shows it.
def test_load_balancing_gets_the_same_gradients_from_1x8_8x1_and_2x4(stage1, tmp_path):
    Image.new("RGB", (24, 24), (200, 30, 30)).save(tmp_path / "red.png")
    sample = {"image": "red.png", "conversations": [{"from": "human", "value": "<image>\nWhat color is it?"},
                                                    {"from": "gpt", "value": "It is red."}]}
    (tmp_path / "same.json").write_text(json.dumps([{**sample, "id": f"s{i}"} for i in range(8)]))
    moved = {}
    for processes, batch in ((1, 8), (1, 1), (2, 4)):
        out = tmp_path / f"{processes}x{batch}"
        run_script("finetune.sh", {"NUM_GPUS": str(processes), "GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": str(batch),
                                   "STAGE1_DIR": str(stage1), "DATA_PATH": str(tmp_path / "same.json"),
                                   "IMAGE_FOLDER": str(tmp_path), "OUTPUT_DIR": str(out), "ADAPTER": "moelora",
                                   "NUM_EXPERTS": "4", "TOP_K": "2", "LORA_R": "4", "LORA_ALPHA": "8",
                                   "LORA_DROPOUT": "0", "LR": "0.5", "MM_PROJECTOR_LR": "0.5"},
                   "--max_steps", "1", "--optim", "sgd", "--load_balance_coef", "1.0", "--warmup_steps", "0",
                   "--lr_scheduler_type", "constant", "--dataloader_num_workers", "0", "--save_strategy", "no",
                   "--model_max_length", "256", "--group_by_modality_length", "False")
        moved[(processes, batch)] = load_file(str(out / "trainable.safetensors"))
    reference = moved[(1, 8)]
    assert [name for name in reference if "lora_router" in name]  # the routers, which the term drives
    for run in ((1, 1), (2, 4)):
        for name, tensor in reference.items():
            # float32 sums over 8 micro-batches (or 2 ranks) against one batch of 8: ~1e-7 relative per operation
            torch.testing.assert_close(moved[run][name], tensor, rtol=1e-4, atol=1e-6, msg=f"{run}: {name}")
