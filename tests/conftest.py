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


# --- tiny LLaVA bases, saved and reloaded like Vicuna and CLIP -------------------------------

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: What color is the circle? The circle is red. What shape is left of the square?",
    "How many shapes are there? There are 3 shapes. A red circle and a blue square on a white canvas.",
    "You are a helpful assistant. Describe the image. Answer with the option's letter from the given choices directly.",
]


def _save_bases(root, style="llama", architecture="llama"):
    from llava_moslora.model.tiny import save_tiny_clip, save_tiny_lm, train_tokenizer
    tokenizer = train_tokenizer(CORPUS * 4, style=style, vocab_size=400)
    lm = save_tiny_lm(root / f"{architecture}-{style}", tokenizer, architecture=architecture)
    tower = root / "clip"
    if not tower.exists():
        save_tiny_clip(tower, image_size=32, patch_size=8)
    return {"vision_tower": str(tower), "language_model": str(lm)}


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory):
    """A tiny CLIP tower (16 patch tokens) and a tiny Llama with a Vicuna-style tokenizer."""
    return _save_bases(tmp_path_factory.mktemp("bases"))


@pytest.fixture(scope="session")
def tiny_base_factory(tmp_path_factory):
    root = tmp_path_factory.mktemp("more-bases")
    return lambda style, architecture: _save_bases(root, style, architecture)
