"""Loading a stage-1 projector from a file: LLaVA's mm_projector.bin or a .safetensors file."""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

# LLaVA names the mlp2x_gelu projector an nn.Sequential(Linear, GELU, Linear): indices 0 and 2.
LLAVA_KEY = re.compile(r"(?:.*\.)?mm_projector\.(\d+)\.(weight|bias)$")
OUR_KEY = re.compile(r"(?:.*\.)?multi_modal_projector\.(linear_[12])\.(weight|bias)$")


def load_projector(model, path) -> list[str]:
    """Copy projector weights from `path` into model.model.multi_modal_projector; return the
    parameter names set (model.named_parameters() names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector file or stage-1 checkpoint not found: {path}")
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    mapped = {}
    for key, tensor in state.items():
        if match := LLAVA_KEY.match(key):
            layer = {"0": "linear_1", "2": "linear_2"}.get(match.group(1))
            if layer is None:
                raise ValueError(f"{path}: {key} is not a layer of an mlp2x_gelu projector")
            mapped[f"model.multi_modal_projector.{layer}.{match.group(2)}"] = tensor
        elif match := OUR_KEY.match(key):
            mapped[f"model.multi_modal_projector.{match.group(1)}.{match.group(2)}"] = tensor
    parameters = {n: p for n, p in model.named_parameters() if n.startswith("model.multi_modal_projector.")}
    missing = sorted(set(parameters) - set(mapped))
    if missing:
        raise KeyError(f"{path} lacks projector tensors {missing} (found keys: {sorted(state)[:6]})")
    with torch.no_grad():
        for name, tensor in mapped.items():
            if parameters[name].shape != tensor.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model's projector "
                                 f"expects {tuple(parameters[name].shape)} (another vision tower or LLM?)")
            parameters[name].copy_(tensor.to(parameters[name].dtype))
    return sorted(mapped)
