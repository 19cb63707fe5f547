"""Adapter state: exactly the adapter tensors (A, B, mixer, router) under stable keys.

Keys are "<module name>.<tensor name>", e.g. "layers.0.q_proj.lora_M". The mixer and the
router are saved like any other adapter tensor, and loading is strict by default: a key that is
missing or unexpected is an error naming it, so no tensor is ever dropped silently.
"""
from __future__ import annotations

import torch
from torch import nn

from .inject import iter_adapter_layers


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached adapter tensors of every adapter layer in `model`, in module order."""
    state = {}
    for name, layer in iter_adapter_layers(model):
        prefix = f"{name}." if name else ""
        for tensor_name, tensor in layer.adapter_tensors().items():
            state[prefix + tensor_name] = tensor.detach()
    return state


def _describe(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor],
                            strict: bool = True) -> tuple[list[str], list[str]]:
    """Copy `state` into the model's adapter tensors. Returns (missing, unexpected) keys.

    strict=True raises KeyError naming every missing or unexpected key; a shape mismatch is
    always a ValueError naming the key and both shapes.
    """
    targets = {}
    for name, layer in iter_adapter_layers(model):
        prefix = f"{name}." if name else ""
        for tensor_name, tensor in layer.adapter_tensors().items():
            targets[prefix + tensor_name] = tensor
    if not targets:
        raise ValueError("the model has no adapter layers; call apply_adapters with the same "
                         "AdapterConfig before loading adapter tensors")
    missing = [k for k in targets if k not in state]
    unexpected = [k for k in state if k not in targets]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys: {_describe(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_describe(unexpected)}")
        raise KeyError("adapter state does not match the model's adapters; " + "; ".join(parts))
    with torch.no_grad():
        for key, tensor in targets.items():
            if key not in state:
                continue
            value = state[key]
            if value.shape != tensor.shape:
                raise ValueError(f"adapter tensor {key!r} has shape {tuple(value.shape)} in the "
                                 f"state but {tuple(tensor.shape)} in the model (different r, "
                                 "number of experts or base layer?)")
            tensor.copy_(value.to(device=tensor.device, dtype=tensor.dtype))
    return missing, unexpected
