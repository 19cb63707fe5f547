"""LoRA / MoSLoRA layer: init, mixer statistics, the paper's zero-mixer claim, merge, dtypes."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from llava_moslora.adapters import AdapterConfig, LoraLinear, MIXER_INITS, MoELoraLinear


def make_layer(kind="moslora", d_in=32, d_out=24, **kwargs):
    return LoraLinear(nn.Linear(d_in, d_out), AdapterConfig(kind=kind, **kwargs))


@pytest.mark.parametrize("kind, extra", [("lora", {}), *[("moslora", {"mixer_init": m}) for m in MIXER_INITS]])
def test_zero_B_at_init_leaves_the_base_output_unchanged(kind, extra):
    base = nn.Linear(32, 24)
    layer = LoraLinear(base, AdapterConfig(kind=kind, r=4, **extra))
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), base(x))
    assert torch.count_nonzero(layer.lora_B) == 0


def test_moelora_zero_B_at_init_leaves_the_base_output_unchanged():
    base = nn.Linear(32, 24)
    layer = MoELoraLinear(base, AdapterConfig(kind="moelora", r=2, num_experts=4, top_k=2))
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), base(x))


def test_A_is_kaiming_uniform():
    layer = make_layer(d_in=256, r=64)
    bound = 1 / math.sqrt(256)
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.var().item() == pytest.approx(bound ** 2 / 3, rel=0.05)


def test_mixer_init_statistics():
    r = 64
    mixer = {m: make_layer(r=r, mixer_init=m).lora_M.detach() for m in MIXER_INITS}
    bound = 1 / math.sqrt(r)  # kaiming_uniform(a=sqrt(5)) on an r x r matrix
    assert mixer["kaiming"].abs().max() <= bound
    assert mixer["kaiming"].var().item() == pytest.approx(bound ** 2 / 3, rel=0.1)
    assert abs(mixer["kaiming"].mean().item()) < 0.01
    torch.testing.assert_close(mixer["orthogonal"] @ mixer["orthogonal"].T, torch.eye(r), atol=1e-5, rtol=0)
    assert torch.equal(mixer["identity"], torch.eye(r))
    assert mixer["normal"].std().item() == pytest.approx(1 / r, rel=0.1)
    assert abs(mixer["normal"].mean().item()) < 0.01 / math.sqrt(r)
    assert torch.count_nonzero(mixer["zero"]) == 0
    half = torch.eye(r // 2)
    assert torch.equal(mixer["butterfly"], torch.cat([torch.cat([half, half], 1)] * 2, 0))


def _adapter_grads(layer, x):
    out = layer(x)
    (out * torch.randn_like(out)).sum().backward()
    return {n: layer.get_parameter(n).grad for n in layer.adapter_tensor_names}


def test_zero_mixer_never_learns():
    """With B = 0 and M = 0, the gradients of A, M and B are all exactly zero (the paper)."""
    grads = _adapter_grads(make_layer(r=8, mixer_init="zero"), torch.randn(6, 32))
    for name, grad in grads.items():
        assert grad is not None and torch.count_nonzero(grad) == 0, name
    # ...whereas a Kaiming mixer gives B a gradient at the same point: the check can fail.
    grads = _adapter_grads(make_layer(r=8, mixer_init="kaiming"), torch.randn(6, 32))
    assert torch.count_nonzero(grads["lora_B"]) > 0


def test_identity_frozen_mixer_is_exactly_lora():
    base = nn.Linear(32, 24)
    lora = LoraLinear(base, AdapterConfig(kind="lora", r=8, alpha=16))
    mos = LoraLinear(base, AdapterConfig(kind="moslora", r=8, alpha=16, mixer_init="identity",
                                         mixer_trainable=False))
    with torch.no_grad():
        lora.lora_B.normal_()
        mos.lora_A.copy_(lora.lora_A)
        mos.lora_B.copy_(lora.lora_B)
    x = torch.randn(3, 7, 32)
    upstream = torch.randn(3, 7, 24)
    out_lora, out_mos = lora(x), mos(x)
    assert torch.equal(out_lora, out_mos)
    (out_lora * upstream).sum().backward()
    (out_mos * upstream).sum().backward()
    assert torch.equal(lora.lora_A.grad, mos.lora_A.grad)
    assert torch.equal(lora.lora_B.grad, mos.lora_B.grad)
    assert not mos.lora_M.requires_grad and mos.lora_M.grad is None


class _CountLinear(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            self.shapes.append(tuple(args[1].shape))
        return func(*args, **(kwargs or {}))


def test_plain_lora_has_no_mixer_and_no_r_by_r_matmul():
    lora, mos = make_layer("lora", r=8), make_layer("moslora", r=8)
    assert lora.lora_M is None and lora.adapter_tensor_names == ("lora_A", "lora_B")
    x = torch.randn(4, 32)
    for layer, expected in ((lora, [(24, 32), (8, 32), (24, 8)]), (mos, [(24, 32), (8, 32), (8, 8), (24, 8)])):
        with _CountLinear() as counter:
            layer(x)
        assert counter.shapes == expected


def test_any_leading_dimensions():
    layer = make_layer(r=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 5, 32)
    out = layer(x)
    assert out.shape == (2, 3, 5, 24)
    torch.testing.assert_close(out.reshape(-1, 24), layer(x.reshape(-1, 32)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_base_and_adapter(dtype):
    layer = make_layer(r=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(6, 32)
    reference = layer(x)
    low = make_layer(r=4).to(dtype)
    low.load_state_dict(layer.state_dict())
    out = low(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)
    # fp32 adapter on a low-precision base: adapter math in fp32, result in the base's dtype.
    for name in low.adapter_tensor_names:
        low.get_parameter(name).data = low.get_parameter(name).data.float()
    out = low(x.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    out.float().sum().backward()
    assert low.lora_B.grad.dtype == torch.float32


@pytest.mark.parametrize("kind, use_rslora", [("lora", False), ("moslora", False), ("moslora", True)])
def test_delta_weight_merge_and_unmerge(kind, use_rslora):
    layer = make_layer(kind, r=8, alpha=32, use_rslora=use_rslora)
    with torch.no_grad():
        layer.lora_B.normal_()
    A, B = layer.lora_A.detach().double(), layer.lora_B.detach().double()
    M = torch.eye(8, dtype=torch.float64) if layer.lora_M is None else layer.lora_M.detach().double()
    scale = 32 / (math.sqrt(8) if use_rslora else 8)
    torch.testing.assert_close(layer.delta_weight().double(), scale * B @ M @ A, rtol=1e-5, atol=1e-6)

    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(10, 32)
    unmerged = layer(x)
    layer.merge()
    merged = layer(x)
    rel = ((merged - unmerged).norm() / unmerged.norm()).item()
    assert rel < 1e-5, rel
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-6)


def test_dropout_acts_on_the_adapter_input_only():
    layer = make_layer(r=4, dropout=0.5)
    x = torch.randn(64, 32)
    layer.train()
    assert torch.equal(layer(x), layer.base_layer(x))  # B = 0: dropout must not touch the base path
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.eval()
    torch.testing.assert_close(layer(x), layer.base_layer(x) + x @ layer.delta_weight().T, rtol=1e-5, atol=1e-5)
