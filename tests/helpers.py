"""Helpers shared by the tests (imported as `helpers`; pyproject puts tests/ on the path).

Fixtures live in conftest.py files; everything a test imports by name lives here, since several
conftest.py modules would shadow each other under one module name.
"""
import json
import os
import subprocess
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


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


CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: What color is the circle? The circle is red. What shape is left of the square?",
    "How many shapes are there? There are 3 shapes. A red circle and a blue square on a white canvas.",
    "You are a helpful assistant. Describe the image. Answer with the option's letter from the given choices directly.",
]


def save_bases(root, style="llama", architecture="llama"):
    """A tiny CLIP tower and a tiny causal LM with a trained tokenizer, saved under root."""
    from llava_moslora.model.tiny import save_tiny_clip, save_tiny_lm, train_tokenizer
    tokenizer = train_tokenizer(CORPUS * 4, style=style, vocab_size=400)
    lm = save_tiny_lm(root / f"{architecture}-{style}", tokenizer, architecture=architecture)
    tower = root / "clip"
    if not tower.exists():
        save_tiny_clip(tower, image_size=32, patch_size=8)
    return {"vision_tower": str(tower), "language_model": str(lm)}


def run_script(script, env_vars, *extra, timeout=900):
    """Run scripts/<script> as a user would, with 2 processes unless told otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update({"OMP_NUM_THREADS": "1", "NUM_GPUS": "2", "PYTHONUNBUFFERED": "1", **env_vars})
    result = subprocess.run(["bash", str(ROOT / "scripts" / script), *extra], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


def losses(output_dir):
    """The per-step training losses a run logged."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]
