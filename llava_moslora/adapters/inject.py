"""Putting adapters into a model and taking them out: target matching, apply, merge."""
from __future__ import annotations

import re
from typing import Iterator

from torch import nn

from .config import AdapterConfig, TargetSpec
from .layers import AdapterLayer, LoraLinear
from .moe import MoELoraLinear

LAYER_CLASSES = {"lora": LoraLinear, "moslora": LoraLinear, "moelora": MoELoraLinear}


def matches(name: str, spec: TargetSpec) -> bool:
    """PEFT's rules: a regex string must match the whole name; a list entry matches the full
    name or its dotted suffix (so "q_proj" matches "model.layers.0.self_attn.q_proj")."""
    if spec is None:
        return False
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == target or name.endswith("." + target) for target in spec)


def iter_adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def _select_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    adapted = {name for name, _ in iter_adapter_layers(model)}
    selected = []
    for name, module in model.named_modules():
        if not name or matches(name, config.exclude_modules):
            continue
        if config.target_modules is not None and not matches(name, config.target_modules):
            continue
        inside = next((a for a in adapted if name == a or name.startswith(a + ".")), None)
        if inside is not None:
            raise ValueError(
                f"module {name!r} already carries an adapter ({inside!r}); adapters cannot be "
                "applied twice: load their state, or merge them first")
        # A regex (or no target list) is a pattern over many modules: it selects the linear ones.
        # A listed name is explicit: naming a non-linear module is a mistake worth reporting.
        if not isinstance(config.target_modules, list) and not isinstance(module, nn.Linear):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"target {name!r} is a {type(module).__name__}, not an nn.Linear; adapters wrap "
                "linear layers only, so name its linear sub-modules instead")
        selected.append(name)
    if not selected:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        preview = ", ".join(linear[:8]) + (" ..." if len(linear) > 8 else "")
        raise ValueError(
            f"target_modules={config.target_modules!r} (exclude_modules={config.exclude_modules!r}) "
            f"matched no nn.Linear module; linear modules here: {preview or 'none'}")
    return selected


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_adapters(model: nn.Module, config: AdapterConfig, *, freeze_base: bool = True) -> list[str]:
    """Replace every nn.Linear that `config` targets with an adapter layer, in place.

    Returns the adapted module names. With freeze_base (the default) every parameter of `model`
    that is not an adapter tensor stops requiring gradients; a frozen mixer stays frozen.
    """
    targets = _select_targets(model, config)
    layer_class = LAYER_CLASSES[config.kind]
    if freeze_base:
        # Adapters applied earlier (say, to the vision tower) keep their trainable state.
        earlier = [t for _, layer in iter_adapter_layers(model) for t in layer.adapter_tensors().values()
                   if t.requires_grad]
        model.requires_grad_(False)
        for tensor in earlier:
            tensor.requires_grad_(True)
    for name in targets:
        layer = layer_class(model.get_submodule(name), config)
        if freeze_base:
            for tensor_name, tensor in layer.adapter_tensors().items():
                tensor.requires_grad_(tensor_name != "lora_M" or config.mixer_trainable)
        _set_submodule(model, name, layer)
    return targets


def merge_adapters(model: nn.Module) -> list[str]:
    """Fold every LoRA/MoSLoRA adapter into its base weight (fp32 math) and put the plain
    nn.Linear back. MoE-LoRA has token-dependent gates and cannot be folded: ValueError."""
    layers = list(iter_adapter_layers(model))
    moe = [name for name, layer in layers if isinstance(layer, MoELoraLinear)]
    if moe:
        raise ValueError(
            f"MoE-LoRA adapters cannot be merged (their update depends on each token's router "
            f"gates): {moe[:4]}{' ...' if len(moe) > 4 else ''}. Keep the adapter checkpoint and "
            "load it with its adapters instead.")
    for name, layer in layers:
        if not layer.merged:
            layer.merge()
        _set_submodule(model, name, layer.base_layer)
    return [name for name, _ in layers]
