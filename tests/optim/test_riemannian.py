"""Riemannian preconditioning hooks: closed forms in float64, accumulation, and RSGD vs SGD."""
import copy

import pytest
import torch
from torch import nn

from helpers import TwoLayer, assert_close_rel, randomize_adapters
from llava_moslora.adapters import AdapterConfig, apply_adapters, iter_adapter_layers
from llava_moslora.optim import attach_riemannian

REG = 1e-3
CONFIGS = {
    "lora": dict(kind="lora", r=4),
    "moslora": dict(kind="moslora", r=4),
    "moslora_frozen_butterfly": dict(kind="moslora", r=4, mixer_init="butterfly", mixer_trainable=False),
    "moelora": dict(kind="moelora", r=3, num_experts=4, top_k=2, gate_rescale="sqrt"),
}


def adapted_model(config):
    model = TwoLayer()
    apply_adapters(model, AdapterConfig(**config))
    randomize_adapters(model, scale=0.3)
    return model


def gradients(model, x, upstream):
    model.zero_grad(set_to_none=True)
    (model(x) * upstream).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def inv(gram):
    return torch.linalg.inv(gram + REG * torch.eye(gram.shape[-1], dtype=torch.float64))


def closed_form(model, raw):
    """The preconditioned gradients computed independently, in float64, from the raw ones."""
    expected = dict(raw)
    for name, layer in iter_adapter_layers(model):
        A, B = layer.lora_A.detach().double(), layer.lora_B.detach().double()
        gA, gB = raw[f"{name}.lora_A"].double(), raw[f"{name}.lora_B"].double()
        if layer.kind == "moelora":
            r = layer.r
            for i in range(layer.num_experts):
                rows = slice(i * r, (i + 1) * r)
                A_i, B_i = A[rows], B[:, rows]
                expected[f"{name}.lora_A"] = expected[f"{name}.lora_A"].double().clone()
                expected[f"{name}.lora_B"] = expected[f"{name}.lora_B"].double().clone()
                expected[f"{name}.lora_A"][rows] = inv(B_i.T @ B_i) @ gA[rows]
                expected[f"{name}.lora_B"][:, rows] = gB[:, rows] @ inv(A_i @ A_i.T)
            continue
        M = torch.eye(layer.r, dtype=torch.float64) if layer.lora_M is None else layer.lora_M.detach().double()
        expected[f"{name}.lora_A"] = inv((B @ M).T @ (B @ M)) @ gA
        expected[f"{name}.lora_B"] = gB @ inv((M @ A) @ (M @ A).T)
        if f"{name}.lora_M" in raw:
            expected[f"{name}.lora_M"] = inv(B.T @ B) @ raw[f"{name}.lora_M"].double() @ inv(A @ A.T)
    return expected


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_hooked_gradients_equal_the_float64_closed_form(name, dtype, tol):
    """float64 models check the algebra exactly; fp32 ones check the fp32 solves stay accurate."""
    model = adapted_model(CONFIGS[name]).to(dtype)
    x, upstream = torch.randn(3, 6, 24, dtype=dtype), torch.randn(3, 6, 16, dtype=dtype)
    raw = gradients(model, x, upstream)
    handle = attach_riemannian(model, reg=REG)
    hooked = gradients(model, x, upstream)
    expected = closed_form(model, raw)
    assert set(hooked) == set(expected)
    changed = 0
    for key in hooked:
        assert_close_rel(hooked[key], expected[key], tol, key)
        changed += not torch.allclose(hooked[key], raw[key])
    assert changed == len(handle)  # every hooked factor changed; router and nothing else untouched
    handle.remove()
    after = gradients(model, x, upstream)
    for key in raw:
        torch.testing.assert_close(after[key], raw[key])


def test_identity_mixer_gets_exactly_lora_preconditioning():
    lora = adapted_model(dict(kind="lora", r=4))
    mos = copy.deepcopy(lora)
    for name, layer in iter_adapter_layers(lora):
        mos_layer = mos.get_submodule(name)
        mos_layer.kind = "moslora"
        mos_layer.lora_M = nn.Parameter(torch.eye(4), requires_grad=False)
        mos_layer.adapter_tensor_names = ("lora_A", "lora_M", "lora_B")
    attach_riemannian(lora, reg=REG)
    attach_riemannian(mos, reg=REG)
    x, upstream = torch.randn(5, 24), torch.randn(5, 16)
    g_lora, g_mos = gradients(lora, x, upstream), gradients(mos, x, upstream)
    for key in g_lora:
        torch.testing.assert_close(g_mos[key], g_lora[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["moslora", "moelora"])
def test_gradient_accumulation_equals_one_large_batch(name):
    model = adapted_model(CONFIGS[name])
    attach_riemannian(model, reg=REG)
    x, upstream = torch.randn(8, 24), torch.randn(8, 16)
    big = gradients(model, x, upstream)
    model.zero_grad(set_to_none=True)
    for half in (slice(0, 4), slice(4, 8)):
        (model(x[half]) * upstream[half]).sum().backward()
    for key, grad in big.items():
        assert_close_rel(dict(model.named_parameters())[key].grad, grad, 1e-4, key)


def test_bf16_factors_are_preconditioned_in_fp32():
    model = adapted_model(CONFIGS["moslora"]).to(torch.bfloat16)
    attach_riemannian(model, reg=REG)
    grads = gradients(model, torch.randn(4, 24, dtype=torch.bfloat16), torch.randn(4, 16, dtype=torch.bfloat16))
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads.values())


def test_needs_adapters():
    with pytest.raises(ValueError, match="no trainable adapter factors"):
        attach_riemannian(TwoLayer())


@pytest.mark.parametrize("reg", [0.0, -1e-6])
def test_damping_must_be_positive_because_lora_b_starts_at_zero(reg):
    with pytest.raises(ValueError, match="reg must be > 0"):
        attach_riemannian(adapted_model(CONFIGS["lora"]), reg=reg)


def _low_rank_regression(riemannian, lr, kind, steps=100):
    """Fit an ill-conditioned rank-4 map (singular values 10, 3, 1, 0.3) with a rank-4 adapter."""
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(32, 4, generator=g))[0]
    v = torch.linalg.qr(torch.randn(32, 4, generator=g))[0]
    target = u @ torch.diag(torch.tensor([10.0, 3.0, 1.0, 0.3])) @ v.T
    x = torch.randn(256, 32, generator=g)
    y = x @ target.T
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32, bias=False))
    nn.init.zeros_(model[0].weight)
    apply_adapters(model, AdapterConfig(kind=kind, r=4, alpha=4))
    if riemannian:
        attach_riemannian(model, reg=1e-6)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = ((model(x) - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = ((model(x) - y) ** 2).mean().item()
    return final if final == final else float("inf")  # NaN (diverged) counts as infinitely bad


@pytest.mark.parametrize("kind", ["lora", "moslora"])
def test_rsgd_beats_sgd_on_an_ill_conditioned_low_rank_regression(kind):
    """Each optimizer gets its best learning rate from the same grid and the same 100 steps."""
    grid = [0.03, 0.1, 0.3, 1.0, 2.0]
    sgd = {lr: _low_rank_regression(False, lr, kind) for lr in grid}
    rsgd = {lr: _low_rank_regression(True, lr, kind) for lr in grid}
    best_sgd, best_rsgd = min(sgd.values()), min(rsgd.values())
    print(f"\n[{kind}] final MSE after 100 steps, best lr of {grid}: "
          f"SGD {best_sgd:.3e} (lr {min(sgd, key=sgd.get)}), RSGD {best_rsgd:.3e} (lr {min(rsgd, key=rsgd.get)})")
    assert best_rsgd < 0.1 * best_sgd
