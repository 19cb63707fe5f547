"""MoSLoRA with a frozen mixer (the study's `moslora_frozen` ablation), trained through
scripts/finetune.sh (2 processes, ZeRO-2, Riemannian preconditioning): the mixers end training
bit-identical to their initialisation, the checkpoint stores them, and loading it gives back
the model that was trained, not a fresh random mixer."""
import pytest
import torch
from safetensors.torch import load_file

from helpers import FAST, run_script, stage2_env

pytestmark = pytest.mark.slow


def initial_mixers(stage1, output_dir, seed):
    """The mixers `llava-moslora train` draws for these flags: its own seeding, building and
    tuning, without training."""
    from transformers import set_seed

    from llava_moslora.train.main import build, parse
    from llava_moslora.model import apply_tuning

    model_args, _, training_args = parse([
        "--pretrain_mm_mlp_adapter", str(stage1), "--data_path", "unused.json", "--output_dir", str(output_dir),
        "--stage", "2", "--tune_vision_tower", "frozen", "--tune_mm_projector", "full",  # as finetune.sh has it
        "--tune_language_model", "adapter", "--adapter", "moslora", "--lora_r", "8", "--lora_alpha", "16", "--mixer_init", "kaiming",
        "--mixer_trainable", "False", "--seed", str(seed), "--use_cpu", "True"])
    set_seed(training_args.seed)
    bundle = build(model_args, training_args)
    apply_tuning(bundle.model, bundle.recipe)
    return {name: p.detach().clone() for name, p in bundle.model.named_parameters() if name.endswith("lora_M")}


def test_a_frozen_mixer_is_its_init_after_training_and_after_loading(shapes_data, stage1, tmp_path):
    from llava_moslora.model import load_checkpoint

    out = tmp_path / "frozen"
    run_script("finetune.sh", stage2_env(shapes_data, stage1, out, ADAPTER="moslora"),
               "--mixer_trainable", "False", "--mixer_init", "kaiming", "--riemannian", "True",
               "--max_steps", "4", "--seed", "7", *FAST)
    saved = load_file(str(out / "trainable.safetensors"))
    mixers = {name: tensor for name, tensor in saved.items() if name.endswith("lora_M")}
    initial = initial_mixers(stage1, tmp_path / "unused", seed=7)
    assert len(mixers) == len(initial) > 0
    by_suffix = {name.split("language_model.", 1)[-1]: tensor for name, tensor in initial.items()}
    for name, tensor in mixers.items():
        assert torch.equal(tensor, by_suffix[name.split("language_model.", 1)[-1]]), name  # bit-identical
    assert any(name.endswith("lora_B") and tensor.abs().sum() > 0 for name, tensor in saved.items())  # B trained

    loaded = load_checkpoint(out).model
    reloaded = {name: p for name, p in loaded.named_parameters() if name.endswith("lora_M")}
    assert len(reloaded) == len(mixers)
    for name, parameter in reloaded.items():
        assert torch.equal(parameter, by_suffix[name.split("language_model.", 1)[-1]]), name
