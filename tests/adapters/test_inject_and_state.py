"""apply_adapters, merge_adapters, adapter_state_dict / load_adapter_state_dict."""
import copy

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from helpers import TwoLayer, randomize_adapters
from llava_moslora.adapters import (AdapterConfig, LoraLinear, MoELoraLinear, adapter_state_dict,
                                    apply_adapters, load_adapter_state_dict, merge_adapters)

MOE = dict(kind="moelora", r=2, num_experts=3, top_k=2)


def trainable(model):
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def test_apply_replaces_targets_and_freezes_the_rest(two_layer):
    names = apply_adapters(two_layer, AdapterConfig(kind="moslora", r=4, target_modules=["q_proj"]))
    assert names == ["q_proj"]
    assert isinstance(two_layer.q_proj, LoraLinear) and isinstance(two_layer.o_proj, nn.Linear)
    assert trainable(two_layer) == ["q_proj.lora_A", "q_proj.lora_B", "q_proj.lora_M"]


def test_defaults_adapt_every_linear_and_frozen_mixer_stays_frozen(two_layer):
    names = apply_adapters(two_layer, AdapterConfig(kind="moslora", r=4, mixer_init="butterfly",
                                                    mixer_trainable=False))
    assert names == ["q_proj", "o_proj"]
    assert trainable(two_layer) == ["o_proj.lora_A", "o_proj.lora_B", "q_proj.lora_A", "q_proj.lora_B"]


def test_freeze_base_false_keeps_other_parameters_trainable(two_layer):
    apply_adapters(two_layer, AdapterConfig(kind="lora", target_modules=["o_proj"]), freeze_base=False)
    assert "norm.weight" in trainable(two_layer) and "q_proj.weight" in trainable(two_layer)
    assert "o_proj.base_layer.weight" not in trainable(two_layer)


def test_regex_targets_and_exclusions():
    model = nn.ModuleDict({"vision": TwoLayer(), "text": TwoLayer()})
    names = apply_adapters(model, AdapterConfig(kind="lora", target_modules=r"text\..*_proj",
                                                exclude_modules=["o_proj"]))
    assert names == ["text.q_proj"]


def test_separate_configs_for_separate_parts_keep_each_trainable():
    model = nn.ModuleDict({"vision": TwoLayer(), "text": TwoLayer()})
    apply_adapters(model["vision"], AdapterConfig(kind="moslora", r=2))
    apply_adapters(model, AdapterConfig(kind="lora", r=4, target_modules=r"text\..*"))
    assert "vision.q_proj.lora_M" in trainable(model) and "text.q_proj.lora_A" in trainable(model)
    assert model["vision"].q_proj.r == 2 and model["text"].q_proj.r == 4


def test_targets_that_match_nothing(two_layer):
    with pytest.raises(ValueError, match=r"matched no nn.Linear module; linear modules here: q_proj, o_proj"):
        apply_adapters(two_layer, AdapterConfig(target_modules=["k_proj"]))


def test_target_that_is_not_linear(two_layer):
    with pytest.raises(ValueError, match=r"target 'norm' is a LayerNorm, not an nn.Linear"):
        apply_adapters(two_layer, AdapterConfig(target_modules=["norm"]))


@pytest.mark.parametrize("second", [None, ["q_proj"]])
def test_applying_twice_is_an_error(two_layer, second):
    apply_adapters(two_layer, AdapterConfig(kind="lora"))
    with pytest.raises(ValueError, match=r"already carries an adapter \('q_proj'\)"):
        apply_adapters(two_layer, AdapterConfig(kind="moslora", target_modules=second))


def test_state_dict_keys_are_exactly_the_adapter_tensors(two_layer):
    apply_adapters(two_layer, AdapterConfig(kind="moslora", r=4, target_modules=["q_proj"]))
    apply_adapters(two_layer, AdapterConfig(**MOE, target_modules=["o_proj"]))
    state = adapter_state_dict(two_layer)
    assert list(state) == ["q_proj.lora_A", "q_proj.lora_M", "q_proj.lora_B",
                           "o_proj.lora_A", "o_proj.lora_B", "o_proj.lora_router.weight"]
    assert state["q_proj.lora_M"].shape == (4, 4) and state["o_proj.lora_router.weight"].shape == (3, 40)


@pytest.mark.parametrize("config", [dict(kind="lora", r=4), dict(kind="moslora", r=4), MOE])
def test_save_load_round_trip(tmp_path, config):
    base = TwoLayer()
    trained, fresh = copy.deepcopy(base), copy.deepcopy(base)
    apply_adapters(trained, AdapterConfig(**config))
    randomize_adapters(trained)
    save_file(adapter_state_dict(trained), str(tmp_path / "adapter.safetensors"))
    apply_adapters(fresh, AdapterConfig(**config))
    x = torch.randn(4, 24)
    assert not torch.allclose(fresh(x), trained(x))
    missing, unexpected = load_adapter_state_dict(fresh, load_file(str(tmp_path / "adapter.safetensors")))
    assert missing == [] and unexpected == []
    assert torch.equal(fresh(x), trained(x))


def test_strict_loading_names_missing_and_unexpected_keys(two_layer):
    apply_adapters(two_layer, AdapterConfig(kind="moslora", r=4))
    state = dict(adapter_state_dict(two_layer))
    del state["q_proj.lora_M"]  # what the official MoSLoRA code lost silently
    state["k_proj.lora_A"] = torch.zeros(4, 24)
    with pytest.raises(KeyError, match=r"missing keys: q_proj.lora_M; unexpected keys: k_proj.lora_A"):
        load_adapter_state_dict(two_layer, state)
    missing, unexpected = load_adapter_state_dict(two_layer, state, strict=False)
    assert missing == ["q_proj.lora_M"] and unexpected == ["k_proj.lora_A"]


def test_shape_mismatch_names_the_key(two_layer):
    apply_adapters(two_layer, AdapterConfig(kind="lora", r=4))
    state = adapter_state_dict(two_layer)
    state["o_proj.lora_B"] = torch.zeros(16, 8)
    with pytest.raises(ValueError, match=r"'o_proj.lora_B' has shape \(16, 8\) in the state but \(16, 4\)"):
        load_adapter_state_dict(two_layer, state)


def test_loading_into_a_model_without_adapters(two_layer):
    with pytest.raises(ValueError, match="no adapter layers"):
        load_adapter_state_dict(two_layer, {})


@pytest.mark.parametrize("kind", ["lora", "moslora"])
def test_merge_adapters_restores_plain_linear_with_the_same_outputs(two_layer, kind):
    apply_adapters(two_layer, AdapterConfig(kind=kind, r=4))
    randomize_adapters(two_layer)
    x = torch.randn(6, 24)
    before = two_layer(x)
    assert merge_adapters(two_layer) == ["q_proj", "o_proj"]
    assert type(two_layer.q_proj) is nn.Linear and type(two_layer.o_proj) is nn.Linear
    after = two_layer(x)
    assert ((after - before).norm() / before.norm()).item() < 1e-5


def test_moelora_refuses_to_merge(two_layer):
    apply_adapters(two_layer, AdapterConfig(**MOE))
    with pytest.raises(ValueError, match="MoE-LoRA adapters cannot be merged"):
        merge_adapters(two_layer)
    assert isinstance(two_layer.q_proj, MoELoraLinear)  # nothing was changed
