"""Adapters on a real transformers model (a tiny Llama saved and loaded like Vicuna would be)."""
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from helpers import randomize_adapters
from llava_moslora.adapters import AdapterConfig, apply_adapters, export_peft, merge_adapters
from llava_moslora.optim import attach_riemannian

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_moslora_trains_merges_and_exports_on_llama(tiny_llama_dir, tmp_path):
    model = load(tiny_llama_dir)
    names = apply_adapters(model, AdapterConfig(kind="moslora", r=4, alpha=8, target_modules=TARGETS))
    assert len(names) == 2 * len(TARGETS)
    randomize_adapters(model, scale=0.2)
    ids = torch.randint(0, 128, (2, 10))
    model.activation_checkpointing_enable()
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    export_peft(model, tmp_path / "peft", base_model_name_or_path=str(tiny_llama_dir))
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(load(tiny_llama_dir), str(tmp_path / "peft"))(input_ids=ids).logits
    torch.testing.assert_close(peft_logits, adapted, rtol=1e-4, atol=1e-4)
    merge_adapters(model)
    with torch.no_grad():
        merged = model(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_moelora_with_riemannian_and_activation_checkpointing_on_llama(tiny_llama_dir):
    model = load(tiny_llama_dir)
    apply_adapters(model, AdapterConfig(kind="moelora", r=2, num_experts=4, top_k=2, gate_rescale="sqrt",
                                        target_modules=["q_proj", "v_proj"]))
    randomize_adapters(model, scale=0.2)
    attach_riemannian(model)
    ids = torch.randint(0, 128, (2, 10))
    grads = []
    for checkpointing in (False, True):
        model.zero_grad(set_to_none=True)
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for key in grads[0]:  # recomputation must not apply the hooks twice or change the gradients
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-4, atol=1e-6)
