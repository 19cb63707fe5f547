"""QLoRA on the CPU (bitsandbytes): adapters on 4-bit and 8-bit linear layers against float
reference layers holding the dequantized weight; Riemannian preconditioning on them; stage
checkpoints that record and restore the quantization; merge of a 4-bit checkpoint."""
import pytest
import torch
from torch import nn

from helpers import assert_close_rel, randomize_adapters

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (installed by scripts/setup.sh)")

from llava_moslora.adapters import AdapterConfig, LoraLinear, MoELoraLinear  # noqa: E402
from llava_moslora.model.quantize import Quantization, dequantize, is_quantized_linear  # noqa: E402


def quantized_and_reference(bits, d_in=64, d_out=48):
    """A bitsandbytes linear layer and an nn.Linear holding exactly its dequantized weight."""
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    dense = nn.Linear(d_in, d_out)
    if bits == 4:
        layer = bnb.nn.Linear4bit(d_in, d_out, compute_dtype=torch.float32, quant_type="nf4", compress_statistics=True)
    else:
        layer = bnb.nn.Linear8bitLt(d_in, d_out, has_fp16_weights=False)
    layer.load_state_dict(dense.state_dict())
    layer = layer.to("cpu")
    reference = nn.Linear(d_in, d_out)
    with torch.no_grad():
        reference.weight.copy_(dequantize_bnb_weight(layer.weight, getattr(layer, "state", None)).float())
        reference.bias.copy_(dense.bias)
    return layer, reference


def adapted(base, kind):
    torch.manual_seed(1)
    config = AdapterConfig(kind=kind, r=4, alpha=8, **({"num_experts": 4, "top_k": 2} if kind == "moelora" else {}))
    layer = (MoELoraLinear if kind == "moelora" else LoraLinear)(base, config)
    randomize_adapters(layer, scale=0.2)
    return layer


@pytest.mark.parametrize("kind", ["lora", "moslora", "moelora"])
def test_adapters_on_a_4bit_layer_match_the_dequantized_float_layer(kind):
    quantized, reference = quantized_and_reference(4)
    on_q, on_ref = adapted(quantized, kind), adapted(reference, kind)
    assert is_quantized_linear(on_q.base_layer) and on_q.lora_A.dtype == torch.float32
    x = torch.randn(3, 5, 64)
    xq, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_q, out_r = on_q(xq), on_ref(xr)
    assert_close_rel(out_q, out_r, 1e-5, "output")  # bitsandbytes computes x @ dequant(W) on the CPU
    (out_q.square().sum()).backward()
    (out_r.square().sum()).backward()
    assert_close_rel(xq.grad, xr.grad, 1e-5, "input gradient")
    for name in on_ref.adapter_tensor_names:
        assert_close_rel(on_q.get_parameter(name).grad, on_ref.get_parameter(name).grad, 1e-5, name)


def test_adapters_on_an_8bit_layer_get_the_float_layers_adapter_gradients():
    """LLM.int8 also quantizes the activations, so the base output is close, not equal; the
    adapter's own part and its gradients (which do not pass through the base) are the same."""
    quantized, reference = quantized_and_reference(8)
    on_q, on_ref = adapted(quantized, "moslora"), adapted(reference, "moslora")
    x = torch.randn(4, 64)
    out_q, out_r = on_q(x), on_ref(x)
    assert_close_rel(out_q - quantized(x).float(), out_r - reference(x), 1e-5, "adapter part")
    assert_close_rel(out_q.float(), out_r, 3e-2, "output")
    out_q.float().sum().backward()
    out_r.sum().backward()
    for name in on_ref.adapter_tensor_names:
        assert_close_rel(on_q.get_parameter(name).grad, on_ref.get_parameter(name).grad, 1e-5, name)


@pytest.mark.parametrize("kind", ["moslora", "moelora"])
def test_riemannian_preconditioning_is_unchanged_on_a_quantized_base(kind):
    from llava_moslora.optim import attach_riemannian

    quantized, reference = quantized_and_reference(4)
    models = [nn.Sequential(adapted(quantized, kind)), nn.Sequential(adapted(reference, kind))]
    x = torch.randn(6, 64)
    grads = []
    for model in models:
        handle = attach_riemannian(model, reg=1e-6)
        model(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        handle.remove()
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert_close_rel(grads[0][name], grads[1][name], 1e-5, name)


@pytest.fixture(scope="module")
def qlora_checkpoint(tiny_bases, tmp_path_factory):
    """A 4-bit MoSLoRA stage checkpoint on the tiny bases (random non-zero adapters)."""
    from llava_moslora.model import Recipe, apply_tuning, build_llava, save_checkpoint

    bundle = build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], quantization=Quantization(4))
    bundle.recipe = Recipe(**{**bundle.recipe.to_dict(), "stage": 2, "tune_language_model": "adapter",
                              "llm_adapter": AdapterConfig(kind="moslora", r=4).to_dict()})
    apply_tuning(bundle.model, bundle.recipe)
    torch.manual_seed(0)
    randomize_adapters(bundle.model, scale=0.1)
    out = tmp_path_factory.mktemp("qlora") / "moslora-4bit"
    save_checkpoint(bundle, out)
    return out, logits_of(bundle.model)


def logits_of(model, inference=False):
    """Logits of a fixed batch through the quantized layers' training path (x @ dequant(W) in
    the compute dtype, what QLoRA trains through), or with inference=True through bitsandbytes'
    CPU inference kernel (eval mode, no gradients: it repacks the weights for a bf16 kernel,
    about 4e-3 away where the CPU has AVX512-BF16)."""
    torch.manual_seed(3)
    ids = torch.randint(3, 200, (2, 12))
    quantized = [m for m in model.modules() if is_quantized_linear(m)]
    for layer in quantized:
        layer.train(not inference)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    for layer in quantized:
        layer.eval()
    return logits


def test_a_qlora_checkpoint_records_its_quantization_and_loads_quantized(qlora_checkpoint):
    from llava_moslora.model import Recipe, load_checkpoint

    path, saved_logits = qlora_checkpoint
    assert Recipe.load(path).quantization == {"bits": 4, "quant_type": "nf4", "double_quant": True}
    bundle = load_checkpoint(path)
    layer = bundle.model.model.language_model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit" and type(bundle.model.lm_head) is nn.Linear
    assert_close_rel(logits_of(bundle.model), saved_logits, 1e-6, "reloaded logits")
    floating = load_checkpoint(path, quantization=None)  # --bits 16: the float base under the same adapters
    assert type(floating.model.model.language_model.layers[0].self_attn.q_proj.base_layer) is nn.Linear
    assert_close_rel(logits_of(floating.model), saved_logits, 0.2, "float-base logits")


def test_merge_of_a_4bit_checkpoint_is_a_float_model_with_the_quantized_models_logits(qlora_checkpoint, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from llava_moslora.model import load_checkpoint
    from llava_moslora.model.export import merge_checkpoint

    path, saved_logits = qlora_checkpoint
    merged = LlavaForConditionalGeneration.from_pretrained(merge_checkpoint(path, tmp_path / "merged", "float32"))
    assert not any(is_quantized_linear(m) for m in merged.modules())
    assert getattr(merged.config.text_config, "quantization_config", None) is None
    assert_close_rel(logits_of(merged), saved_logits, 1e-5, "merged logits")
    inference = logits_of(load_checkpoint(path).model, inference=True)  # what chat / eval run on a CPU
    assert_close_rel(logits_of(merged), inference, 1e-2, "merged vs quantized inference logits")


def test_dequantize_replaces_every_quantized_layer_even_after_inference(tiny_bases):
    from llava_moslora.model import build_llava

    def quantized():
        return build_llava(tiny_bases["vision_tower"], tiny_bases["language_model"], quantization=Quantization(4)).model

    model = quantized()
    training_path = logits_of(model)
    model = dequantize(model, Quantization(4), torch.float32)
    assert not any(is_quantized_linear(m) for m in model.modules())
    assert_close_rel(logits_of(model), training_path, 1e-5, "dequantized logits")
    # an inference forward on the CPU repacks the weights (scales rounded to bf16); dequantizing
    # afterwards must undo the packing, not read the packed bytes as if they were the saved layout
    model = quantized()
    inference = logits_of(model, inference=True)
    assert_close_rel(inference, training_path, 1e-2, "inference kernel")
    assert_close_rel(logits_of(dequantize(model, Quantization(4), torch.float32)), inference, 1e-2,
                     "dequantized after inference")
