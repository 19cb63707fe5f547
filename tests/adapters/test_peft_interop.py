"""Against the reference implementation: PEFT's LoRA, and PEFT loading our exports."""
import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from helpers import TwoLayer, randomize_adapters
from llava_moslora.adapters import AdapterConfig, apply_adapters, export_peft


def test_our_lora_matches_peft_lora_in_outputs_and_gradients():
    base = TwoLayer()
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"]))
    ours = copy.deepcopy(base)
    apply_adapters(ours, AdapterConfig(kind="lora", r=4, alpha=8, target_modules=["q_proj", "o_proj"]))
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            peft_layer = getattr(peft_model.base_model.model, name)
            peft_layer.lora_B["default"].weight.normal_()
            getattr(ours, name).lora_A.copy_(peft_layer.lora_A["default"].weight)
            getattr(ours, name).lora_B.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(3, 5, 24)
    upstream = torch.randn(3, 5, 16)
    out_peft, out_ours = peft_model(x), ours(x)
    torch.testing.assert_close(out_ours, out_peft, rtol=1e-6, atol=1e-6)
    (out_peft * upstream).sum().backward()
    (out_ours * upstream).sum().backward()
    for name in ("q_proj", "o_proj"):
        peft_layer = getattr(peft_model.base_model.model, name)
        for factor in ("A", "B"):
            ours_grad = getattr(getattr(ours, name), f"lora_{factor}").grad
            peft_grad = getattr(peft_layer, f"lora_{factor}")["default"].weight.grad
            torch.testing.assert_close(ours_grad, peft_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_loads_our_moslora_export_with_the_same_outputs(tmp_path, use_rslora):
    base = TwoLayer()
    ours = copy.deepcopy(base)
    apply_adapters(ours, AdapterConfig(kind="moslora", r=4, alpha=8, use_rslora=use_rslora))
    randomize_adapters(ours, scale=0.3)
    export_peft(ours, tmp_path / "peft", base_model_name_or_path="tiny/base")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "tiny/base"
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    x = torch.randn(7, 24)
    torch.testing.assert_close(loaded(x), ours(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(base(x), ours(x), atol=1e-3)  # the adapter really changes outputs


def test_export_with_different_ranks_per_part_uses_rank_and_alpha_patterns(tmp_path):
    base = TwoLayer()
    ours = copy.deepcopy(base)
    apply_adapters(ours, AdapterConfig(kind="moslora", r=4, alpha=8, target_modules=["q_proj"]))
    apply_adapters(ours, AdapterConfig(kind="lora", r=6, alpha=3, target_modules=["o_proj"]))
    randomize_adapters(ours, scale=0.3)
    export_peft(ours, tmp_path / "peft")
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    assert loaded.base_model.model.o_proj.r["default"] == 6
    x = torch.randn(7, 24)
    torch.testing.assert_close(loaded(x), ours(x), rtol=1e-5, atol=1e-5)


def test_moelora_export_is_refused(tmp_path):
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(kind="moelora", r=2, num_experts=2, top_k=1))
    with pytest.raises(ValueError, match="only lora and moslora adapters can be exported"):
        export_peft(model, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()
