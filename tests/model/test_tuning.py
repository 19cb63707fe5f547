"""Tune modes: the parameters that require grad are exactly what the flags say."""
import pytest
from transformers import HfArgumentParser

from llava_moslora.adapters import LoraLinear, MoELoraLinear
from llava_moslora.model import ModelArguments, Recipe, apply_tuning, build_llava, parameter_counts, trainable_table


def parse(tiny_bases, *flags):
    (arguments,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
        ["--model_name_or_path", tiny_bases["language_model"], "--vision_tower", tiny_bases["vision_tower"], *flags])
    return arguments


def tuned(tiny_bases, *flags):
    arguments = parse(tiny_bases, *flags)
    bundle = build_llava(arguments.vision_tower, arguments.model_name_or_path,
                         projector_type=arguments.mm_projector_type)
    recipe = Recipe(**{**bundle.recipe.to_dict(), **arguments.tune_settings()})
    apply_tuning(bundle.model, recipe)
    trainable = {n for n, p in bundle.model.named_parameters() if p.requires_grad}
    return bundle.model, trainable


def components(names):
    parts = set()
    for name in names:
        for prefix, part in (("model.vision_tower.", "vision"), ("model.multi_modal_projector.", "projector"),
                             ("model.language_model.", "llm"), ("lm_head.", "lm_head")):
            if name.startswith(prefix):
                parts.add(part)
    return parts


def test_default_is_stage_one_projector_only(tiny_bases):
    model, trainable = tuned(tiny_bases)
    assert trainable == {f"model.multi_modal_projector.linear_{i}.{t}" for i in (1, 2) for t in ("weight", "bias")}


def test_llm_adapters_train_with_projector(tiny_bases):
    model, trainable = tuned(tiny_bases, "--tune_language_model", "adapter", "--adapter", "moslora",
                             "--lora_r", "4", "--lora_alpha", "8")
    assert components(trainable) == {"projector", "llm"}
    llm = {n for n in trainable if n.startswith("model.language_model.")}
    assert llm and all(n.rsplit(".", 1)[1] in ("lora_A", "lora_B", "lora_M") for n in llm)
    adapted = [m for m in model.model.language_model.modules() if isinstance(m, LoraLinear)]
    assert len(adapted) == 2 * 7  # every linear of both decoder layers: q k v o gate up down
    assert not any(isinstance(m, LoraLinear) for m in model.model.vision_tower.modules())
    assert not isinstance(model.lm_head, LoraLinear)


def test_full_llm_and_frozen_projector(tiny_bases):
    _, trainable = tuned(tiny_bases, "--tune_language_model", "full", "--tune_mm_projector", "frozen")
    assert components(trainable) == {"llm", "lm_head"}


def test_full_vision_tower(tiny_bases):
    _, trainable = tuned(tiny_bases, "--tune_vision_tower", "full", "--tune_mm_projector", "frozen")
    assert components(trainable) == {"vision"}


def test_vision_and_llm_adapters_with_their_own_ranks(tiny_bases):
    model, trainable = tuned(tiny_bases, "--tune_vision_tower", "adapter", "--tune_language_model", "adapter",
                             "--adapter", "moelora", "--num_experts", "3", "--top_k", "2", "--lora_r", "4",
                             "--vision_lora_r", "2", "--lora_target_modules", "q_proj,v_proj")
    assert components(trainable) == {"vision", "projector", "llm"}
    llm_layers = [m for m in model.model.language_model.modules() if isinstance(m, MoELoraLinear)]
    vision_layers = [m for m in model.model.vision_tower.modules() if isinstance(m, MoELoraLinear)]
    assert len(llm_layers) == 4 and {m.r for m in llm_layers} == {4}
    assert len(vision_layers) == 3 * 6 and {m.r for m in vision_layers} == {2}  # q k v out fc1 fc2 x 3 layers
    assert any(n.endswith("lora_router.weight") for n in trainable)


def test_linear_projector_keeps_its_identity_layer_frozen(tiny_bases):
    _, trainable = tuned(tiny_bases, "--mm_projector_type", "linear")
    assert trainable == {"model.multi_modal_projector.linear_1.weight", "model.multi_modal_projector.linear_1.bias"}


def test_bad_modes_are_refused(tiny_bases):
    with pytest.raises(ValueError, match="tune_mm_projector must be one of"):
        parse(tiny_bases, "--tune_mm_projector", "adapter").tune_settings()
    with pytest.raises(ValueError, match="r must be a positive integer"):
        parse(tiny_bases, "--tune_language_model", "adapter", "--lora_r", "0").tune_settings()


def test_trainable_table(tiny_bases):
    model, trainable = tuned(tiny_bases, "--tune_language_model", "adapter", "--lora_r", "4")
    counts = parameter_counts(model)
    assert sum(t for t, _ in counts.values()) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(total for _, total in counts.values()) == sum(p.numel() for p in model.parameters())
    table = trainable_table(model)
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert f"{'mm_projector':<16}{projector:>14,}{projector:>16,}{100:>9.3f}" in table
    assert table.splitlines()[0].split() == ["component", "trainable", "total", "%"]
    assert {line.split()[0] for line in table.splitlines()[1:]} == {"vision_tower", "mm_projector", "language_model", "total"}


def test_activation_checkpointing_gives_the_same_adapter_gradients(tiny_bases):
    import torch
    from llava_moslora.model import enable_activation_checkpointing
    from helpers import randomize_adapters
    model, _ = tuned(tiny_bases, "--tune_language_model", "adapter", "--lora_r", "4", "--lora_dropout", "0")
    randomize_adapters(model, scale=0.05)
    ids = torch.tensor([[1] + [model.config.image_token_id] * 16 + [5, 6, 7, 8]])
    pixel_values = torch.randn(1, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, pixel_values=pixel_values, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert model.model.language_model.gradient_checkpointing
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7)


def test_cpu_runs_in_fp32_whatever_is_asked():
    import torch
    from llava_moslora.model import select_dtype
    expected = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert select_dtype(bf16=True) == expected
    with pytest.raises(ValueError, match="choose one of --bf16 and --fp16"):
        select_dtype(bf16=True, fp16=True)
