"""Shared fixtures: small deterministic models for adapter tests."""
import pytest
import torch
from torch import nn


class TwoLayer(nn.Module):
    """A tiny model with named linear layers, shaped like an attention/MLP block."""

    def __init__(self, d_in=24, d_hidden=40, d_out=16, bias=True):
        super().__init__()
        self.q_proj = nn.Linear(d_in, d_hidden, bias=bias)
        self.act = nn.GELU()
        self.o_proj = nn.Linear(d_hidden, d_out, bias=bias)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x):
        return self.norm(self.o_proj(self.act(self.q_proj(x))))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def two_layer():
    return TwoLayer()


def randomize_adapters(model, scale=0.1):
    """Give every adapter tensor (B included, which starts at zero) random values."""
    from llava_moslora.adapters import iter_adapter_layers
    with torch.no_grad():
        for _, layer in iter_adapter_layers(model):
            for tensor in layer.adapter_tensors().values():
                tensor.normal_(0, scale)


def assert_close_rel(actual, expected, tol, what=""):
    """Relative error in Frobenius norm: fp32 solves of r x r grams lose digits elementwise."""
    rel = ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()
    assert rel < tol, f"{what}: relative error {rel:.2e} >= {tol:.0e}"
