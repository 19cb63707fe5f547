"""MoE-LoRA layer against a naive per-expert loop; top-k masking; sqrt gate rescaling."""
import pytest
import torch
from torch import nn

from llava_moslora.adapters import AdapterConfig, MoELoraLinear, moe_aux_loss

E, R, K, D_IN, D_OUT = 5, 3, 2, 20, 12


def make_layer(gate_rescale="none", **kwargs):
    config = AdapterConfig(kind="moelora", r=R, alpha=6, num_experts=E, top_k=K,
                           gate_rescale=gate_rescale, **kwargs)
    layer = MoELoraLinear(nn.Linear(D_IN, D_OUT), config)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)
        layer.lora_router.weight.normal_(0, 1.0)
    return layer


def reference_forward(layer, x, sqrt_rescale=False):
    """Per-expert Python loop, written independently from the layer's vectorised code."""
    x2 = x.reshape(-1, D_IN)
    probs = torch.softmax(x2 @ layer.lora_router.weight.T, dim=-1)
    out = layer.base_layer(x2)
    for t in range(x2.shape[0]):
        top = torch.topk(probs[t], layer.top_k).indices.tolist()
        total = sum(probs[t, i] for i in top)
        for i in top:
            g = probs[t, i] / total
            A_i = layer.lora_A[i * R:(i + 1) * R]
            B_i = layer.lora_B[:, i * R:(i + 1) * R]
            expert = layer.scaling * (B_i @ (A_i @ x2[t]))
            if sqrt_rescale:  # REFERENCE.md section 2: out_i = sqrt(g) E_i + (g - sqrt(g)) sg(E_i)
                root = g.sqrt().detach()
                contribution = root * expert + (g - root) * expert.detach()
            else:
                contribution = g * expert
            out = out.index_add(0, torch.tensor([t]), contribution.unsqueeze(0))
    return out.reshape(*x.shape[:-1], D_OUT)


def grads(layer, out, upstream):
    params = [layer.lora_A, layer.lora_B, layer.lora_router.weight]
    return torch.autograd.grad((out * upstream).sum(), params)


@pytest.mark.parametrize("gate_rescale", ["none", "sqrt"])
def test_matches_naive_expert_loop(gate_rescale):
    layer = make_layer(gate_rescale)
    x = torch.randn(2, 4, D_IN)
    upstream = torch.randn(2, 4, D_OUT)
    out = layer(x)
    ref = reference_forward(layer, x, sqrt_rescale=gate_rescale == "sqrt")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for ours, theirs, name in zip(grads(layer, out, upstream), grads(layer, ref, upstream), "A B router".split()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_top_k_keeps_the_largest_gates_renormalised():
    layer = make_layer()
    x = torch.randn(50, D_IN)
    gates = layer.route(x)
    probs = torch.softmax(x @ layer.lora_router.weight.T, dim=-1)
    assert ((gates > 0).sum(-1) == K).all()
    torch.testing.assert_close(gates.sum(-1), torch.ones(50))
    kept = gates > 0
    # every kept expert's probability is at least every dropped expert's
    assert (probs.masked_fill(~kept, float("inf")).min(-1).values
            >= probs.masked_fill(kept, -float("inf")).max(-1).values).all()
    torch.testing.assert_close(gates[kept], (probs * kept / (probs * kept).sum(-1, keepdim=True))[kept])
    load = layer.last_expert_load
    assert load.shape == (E,) and load.sum().item() == pytest.approx(1.0)


def test_masked_experts_do_not_affect_the_output():
    layer = make_layer()
    x = torch.randn(1, D_IN)
    gates = layer.route(x)[0]
    dropped = int((gates == 0).nonzero()[0])
    kept = int(gates.argmax())
    before = layer(x)
    with torch.no_grad():
        layer.lora_B[:, dropped * R:(dropped + 1) * R].add_(100.0)
    assert torch.equal(layer(x), before)
    with torch.no_grad():
        layer.lora_B[:, kept * R:(kept + 1) * R].add_(1.0)
    assert not torch.allclose(layer(x), before)


def test_sqrt_rescale_keeps_forward_and_router_gradient_and_scales_expert_gradient():
    plain, rescaled = make_layer("none"), make_layer("sqrt")
    rescaled.load_state_dict(plain.state_dict())
    x = torch.randn(1, D_IN)  # one token: d out / d expert is then visible per expert
    upstream = torch.randn(1, D_OUT)
    out_plain, out_rescaled = plain(x), rescaled(x)
    torch.testing.assert_close(out_rescaled, out_plain, rtol=0, atol=0)
    g_plain, g_rescaled = grads(plain, out_plain, upstream), grads(rescaled, out_rescaled, upstream)
    torch.testing.assert_close(g_rescaled[2], g_plain[2], rtol=1e-6, atol=1e-7)  # router
    gates = plain.route(x)[0]
    for i in range(E):
        cols = slice(i * R, (i + 1) * R)
        g = gates[i].item()
        if g == 0:
            assert torch.count_nonzero(g_rescaled[1][:, cols]) == 0
            continue
        # plain: d out / d E_i = g; rescaled: sqrt(g). So the ratio of B_i's gradients is sqrt(g)/g.
        torch.testing.assert_close(g_rescaled[1][:, cols], g_plain[1][:, cols] / g ** 0.5, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g_rescaled[0][cols], g_plain[0][cols] / g ** 0.5, rtol=1e-4, atol=1e-6)


def test_leading_dimensions_and_all_experts_kept():
    layer = MoELoraLinear(nn.Linear(D_IN, D_OUT), AdapterConfig(kind="moelora", r=R, num_experts=E, top_k=E))
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 4, D_IN)
    out = layer(x)
    assert out.shape == (2, 3, 4, D_OUT)
    torch.testing.assert_close(out, reference_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_load_balancing_loss_is_off_by_default_and_differentiable_when_on():
    layer = make_layer()
    layer(torch.randn(8, D_IN))
    assert layer.aux_loss is None and moe_aux_loss(layer) is None
    balanced = make_layer(load_balance_coef=0.01)
    balanced(torch.randn(8, D_IN))
    aux = moe_aux_loss(balanced)
    assert aux is not None and aux.item() > 0
    aux.backward()
    assert balanced.lora_router.weight.grad.abs().sum() > 0


def test_moelora_cannot_produce_a_delta_weight():
    with pytest.raises(ValueError, match="cannot be merged"):
        make_layer().delta_weight()
