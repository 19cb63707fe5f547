"""Export LoRA/MoSLoRA adapters as a PEFT LoRA adapter directory.

A MoSLoRA update s * B M A has rank <= r, so it is exactly the LoRA update s * B A' with
A' = M A: folding the mixer into A loses nothing, and any PEFT-based tool can then load the
adapter without this package. Output: adapter_config.json + adapter_model.safetensors, in the
layout `PeftModel.from_pretrained(base_model, out_dir)` reads.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Optional, Union

from safetensors.torch import save_file
from torch import nn

from .inject import iter_adapter_layers
from .layers import LoraLinear

PEFT_KEY_PREFIX = "base_model.model."


def _most_common(values: dict[str, float]) -> float:
    return Counter(values.values()).most_common(1)[0][0]


def export_peft(model: nn.Module, out_dir: Union[str, Path], *,
                base_model_name_or_path: Optional[str] = None,
                modules_to_save: Optional[list[str]] = None) -> Path:
    """Write the LoRA/MoSLoRA adapters of `model` (mixers folded into A) as a PEFT LoRA adapter.

    `model` is the module PEFT will wrap: adapted module names are taken relative to it. Layers
    with different ranks or alphas (say, vision tower vs LLM) are written with PEFT's
    rank_pattern/alpha_pattern. `modules_to_save` names fully trained modules (say, the
    projector) whose whole weights travel with the adapter, as PEFT's modules_to_save.
    MoE-LoRA has no LoRA equivalent: ValueError.
    """
    if not isinstance(model, nn.Module):
        raise TypeError("export_peft takes the adapted model; load a checkpoint first "
                        "(`llava-moslora export-peft` does that for stage checkpoints)")
    layers = list(iter_adapter_layers(model))
    if not layers:
        raise ValueError("the model has no adapter layers to export")
    not_lora = [name for name, layer in layers if not isinstance(layer, LoraLinear)]
    if not_lora:
        raise ValueError(f"only lora and moslora adapters can be exported to PEFT; "
                         f"MoE-LoRA layers found: {not_lora[:4]}{' ...' if len(not_lora) > 4 else ''}")
    if len({layer.use_rslora for _, layer in layers}) > 1:
        raise ValueError("PEFT has a single use_rslora setting; these adapters mix both")
    if layers[0][0] == "":
        raise ValueError("export_peft needs a model that contains the adapted layers, not the layer itself")

    ranks = {name: layer.r for name, layer in layers}
    alphas = {name: layer.alpha for name, layer in layers}
    r, alpha = _most_common(ranks), _most_common(alphas)
    tensors = {}
    for name, layer in layers:
        dtype = layer.lora_A.dtype
        tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = layer.folded_A().to(dtype).contiguous()
        tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous()
    for module_name in modules_to_save or []:
        for tensor_name, tensor in model.get_submodule(module_name).state_dict().items():
            tensors[f"{PEFT_KEY_PREFIX}{module_name}.{tensor_name}"] = tensor.detach().contiguous()
    dropout = layers[0][1].adapter_dropout
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(r),
        "lora_alpha": alpha,
        "lora_dropout": float(getattr(dropout, "p", 0.0)),
        "use_rslora": layers[0][1].use_rslora,
        "target_modules": [name for name, _ in layers],
        # PEFT matches pattern keys as regexes against dotted suffixes: escape the full names.
        "rank_pattern": {re.escape(n): v for n, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(n): v for n, v in alphas.items() if v != alpha},
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": list(modules_to_save) if modules_to_save else None,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.cpu() for k, v in tensors.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
