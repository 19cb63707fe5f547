"""QLoRA through the stage scripts on the CPU (bitsandbytes): 4-bit MoSLoRA trains under ZeRO-2
with 2 processes and its checkpoint loads quantized again; the refusals come before anything is
loaded; the dry run prices the quantized weights."""
import json
import shutil
import subprocess
import sys

import pytest

from helpers import FAST, losses, run_script, stage2_env

pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (installed by scripts/setup.sh)")


def dry_run_env(bases, shapes_data, out, **extra):
    return {"MODEL": bases["language_model"], "VISION_TOWER": bases["vision_tower"],
            "DATA_PATH": str(shapes_data / "captions.json"), "IMAGE_FOLDER": str(shapes_data / "images"),
            "OUTPUT_DIR": str(out), "GLOBAL_BATCH": "8", "PER_DEVICE_BATCH": "4", **extra}


def test_a_stage1_that_trained_the_llm_itself_is_refused_for_qlora(tiny_checkpoint, tmp_path):
    from llava_moslora.model import Recipe, load_checkpoint
    from llava_moslora.model.quantize import Quantization

    recipe = Recipe.load(tiny_checkpoint)
    full = tmp_path / "full"
    full.mkdir()
    for item in tiny_checkpoint.iterdir():
        (full / item.name).write_bytes(item.read_bytes())
    Recipe(**{**recipe.to_dict(), "tune_language_model": "full", "llm_adapter": None}).save(full)
    with pytest.raises(ValueError, match="merge it first"):
        load_checkpoint(full, quantization=Quantization(4))


def test_quantized_bases_are_refused_under_zero3_and_with_full_tuning(tiny_bases, shapes_data, tmp_path):
    zero3 = run_script("pretrain.sh", dry_run_env(tiny_bases, shapes_data, tmp_path, ZERO="3", BITS="4"),
                       "--tune_language_model", "adapter", "--dry_run", succeed=False)
    assert zero3.returncode != 0 and "--bits 4 under ZeRO-3" in zero3.stderr and "ZERO=2" in zero3.stderr
    full = run_script("pretrain.sh", dry_run_env(tiny_bases, shapes_data, tmp_path, BITS="8"),
                      "--tune_language_model", "full", "--dry_run", succeed=False)
    assert full.returncode != 0 and "--bits 8 with --tune_language_model full" in full.stderr


def test_dry_run_prices_the_quantized_weights(tiny_bases, shapes_data, tmp_path):
    def weights(printed):
        return float(next(line for line in printed.splitlines() if line.startswith("  weights")).split()[1])

    flags = ["--tune_language_model", "adapter", "--dry_run", "--bf16", "True"]
    float_run = run_script("pretrain.sh", dry_run_env(tiny_bases, shapes_data, tmp_path), *flags).stdout
    qlora = run_script("pretrain.sh", dry_run_env(tiny_bases, shapes_data, tmp_path, BITS="4"), *flags).stdout
    assert "ZeRO-3" in float_run and "ZeRO-3" not in qlora.split("memory per GPU")[1]  # QLoRA: ZeRO-2 only
    assert weights(qlora) < weights(float_run)


# Slowest fifteen on two workers: ~25 s alone. Both stages on 4-bit bases through the scripts (bitsandbytes'
# CPU kernels), then the quantized reload: QLoRA's whole path, which no in-process test reaches.
@pytest.mark.slow
def test_4bit_moslora_trains_with_two_processes_and_reloads_quantized(tiny_bases, shapes_data, tmp_path):
    """Stage 1 as LLaVA runs it (the LLM frozen, so its base files are what stage 2 quantizes),
    then stage 2 with BITS=4."""
    from llava_moslora.model import Recipe, load_checkpoint

    stage1 = tmp_path / "stage1"
    run_script("pretrain.sh", {**dry_run_env(tiny_bases, shapes_data, stage1), "LR": "1e-2"}, "--max_steps", "10", *FAST)
    out = tmp_path / "qlora"
    run_script("finetune.sh", stage2_env(shapes_data, stage1, out, ADAPTER="moslora", BITS="4"),
               "--max_steps", "30", *FAST)
    values = losses(out)
    start, end = sum(values[:3]) / 3, sum(values[-5:]) / 5
    print(f"\n[qlora 4-bit moslora] loss: first 3 steps {start:.3f}, last 5 steps {end:.3f}")
    assert end < 0.9 * start, values
    assert Recipe.load(out).quantization == {"bits": 4, "quant_type": "nf4", "double_quant": True}
    assert json.loads((out / "train_metrics.json").read_text())["global_step"] == 30
    ours = load_checkpoint(out).model
    layer = ours.model.language_model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit" and layer.lora_M is not None

    # export-peft: PEFT's LoRA on the same base quantized by transformers gives our logits
    import torch
    from peft import PeftModel
    from transformers import BitsAndBytesConfig, LlavaForConditionalGeneration

    base, export = tmp_path / "stage1-merged", tmp_path / "peft"
    for command in (["merge", "--checkpoint", str(stage1), "--out", str(base)],
                    ["export-peft", "--checkpoint", str(out), "--out", str(export), "--base", str(base)]):
        subprocess.run([sys.executable, "-m", "llava_moslora", *command], check=True, capture_output=True, text=True)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32,
                                llm_int8_skip_modules=["lm_head", "model.vision_tower", "model.multi_modal_projector"])
    quantized_base = LlavaForConditionalGeneration.from_pretrained(base, quantization_config=config,
                                                                   device_map={"": "cpu"}, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(quantized_base, str(export)).eval()
    # On CPUs with AVX-512 BF16, bitsandbytes runs 4-bit layers at inference through a fused kernel
    # that rounds the activations to bfloat16 (8 significant bits). The export folds the mixer into
    # A, so PEFT computes B((MA)x) where we compute B(M(Ax)): equal in exact arithmetic, ~1e-7 apart
    # in fp32, and that difference flips bfloat16 roundings of the next layer's inputs (steps of
    # 2^-8 relative), which the tiny model's RMSNorms amplify to ~1e-3 in the logits. Both models
    # therefore run the fp32 path that every CPU has (dequantize, fp32 matmul): then the two sides
    # differ only by fp32 rounding of the fold (relative 2^-24 per operation, times the ~1e2
    # operations on a path and the ~1e2 amplification of the norms: ~1e-4 at most).
    for model in (peft_model, ours):
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 12))
    with torch.no_grad():
        theirs, mine = peft_model(input_ids=ids).logits, ours.eval()(input_ids=ids).logits
    print(f"\n[qlora export parity] max |PEFT - ours| = {(theirs - mine).abs().max().item():.2e}, "
          f"max |logit| = {mine.abs().max().item():.2e}")
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-4)


# Slowest ten of the suite on two workers: ~20 s alone, 4-bit layers run on bitsandbytes' CPU kernels; two
# launches, as resuming is the point (the stopped run's state is the whole run's checkpoint-4, copied).
@pytest.mark.slow
def test_4bit_resume_gives_the_uninterrupted_losses(tiny_bases, shapes_data, tmp_path):
    """DeepSpeed's engine checkpoint holds bitsandbytes' quantization constants, which its layers
    do not take back on a strict load: resuming a QLoRA run must still work, to the same losses."""
    flags = ["--tune_language_model", "adapter", "--lora_r", "8", "--lora_alpha", "16", "--save_steps", "4",
             "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--dataloader_num_workers", "0",
             "--model_max_length", "256", "--learning_rate", "1e-2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_script("pretrain.sh", dry_run_env(tiny_bases, shapes_data, whole, BITS="4"), "--max_steps", "8",
               "--save_total_limit", "2", *flags)
    shutil.copytree(whole / "checkpoint-4", parts / "checkpoint-4")  # a run stopped after its step-4 save
    resumed = run_script("pretrain.sh", dry_run_env(tiny_bases, shapes_data, parts, BITS="4"), "--max_steps", "8",
                         "--resume_from_checkpoint", "auto", *flags)
    assert f"resuming from {parts / 'checkpoint-4'}" in resumed.stdout
    assert losses(parts) == pytest.approx(losses(whole), rel=1e-3) and len(losses(parts)) == 8
