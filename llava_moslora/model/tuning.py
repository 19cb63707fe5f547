"""Per-component tune modes: which parts of LLaVA train, fully or through adapters.

Components: the vision tower, the projector, and the language model (with lm_head). Each is
frozen, fully trained, or (vision tower, language model) adapted with its own AdapterConfig.
Default adapter targets are every nn.Linear inside the component, which leaves out lm_head
(outside the language model) and the projector.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration

from ..adapters import AdapterConfig, apply_adapters
from .recipe import Recipe

COMPONENTS = ("vision_tower", "mm_projector", "language_model")
# Non-reentrant checkpointing needs no trainable input when the embeddings are frozen.
ACTIVATION_CHECKPOINTING_KWARGS = {"use_reentrant": False}


def component_modules(model: LlavaForConditionalGeneration) -> dict[str, list[nn.Module]]:
    return {"vision_tower": [model.model.vision_tower],
            "mm_projector": [model.model.multi_modal_projector],
            "language_model": [model.model.language_model, model.lm_head]}


def apply_tuning(model: LlavaForConditionalGeneration, recipe: Recipe) -> dict[str, list[str]]:
    """Freeze everything, then make trainable exactly what the recipe's tune modes say.

    Returns the adapted module names per component (names relative to that component).
    """
    model.requires_grad_(False)
    parts = component_modules(model)
    adapted: dict[str, list[str]] = {}
    for component, adapter in (("vision_tower", recipe.vision_adapter), ("language_model", recipe.llm_adapter)):
        mode = getattr(recipe, f"tune_{component}")
        if mode == "full":
            for module in parts[component]:
                module.requires_grad_(True)
        elif mode == "adapter":
            if adapter is None:
                raise ValueError(f"tune_{component}='adapter' needs adapter settings for the {component}")
            adapted[component] = apply_adapters(parts[component][0], AdapterConfig.from_dict(adapter))
    if recipe.tune_mm_projector == "full":
        projector = model.model.multi_modal_projector
        projector.requires_grad_(True)
        if recipe.projector_type == "linear":  # its second layer is a fixed identity
            projector.linear_2.requires_grad_(False)
    return adapted


def parameter_counts(model: LlavaForConditionalGeneration) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameters per component; shared tensors are counted once."""
    seen: set[int] = set()
    counts = {}
    for component, modules in component_modules(model).items():
        trainable = total = 0
        for module in modules:
            for parameter in module.parameters():
                if id(parameter) in seen:
                    continue
                seen.add(id(parameter))
                numel = getattr(parameter, "ds_numel", parameter.numel())  # ZeRO-3 keeps the true size here
                total += numel
                trainable += numel if parameter.requires_grad else 0
        counts[component] = (trainable, total)
    return counts


# What an adapter's trainable tensors are, by their names (adapters/layers.py, adapters/moe.py).
ADAPTER_KINDS = {"lora_A": "factors", "lora_B": "factors", "lora_M": "mixers", "lora_router": "routers"}
KINDS = ("factors", "mixers", "routers", "whole")


def trainable_by_kind(model: LlavaForConditionalGeneration) -> dict[str, dict[str, int]]:
    """Trainable parameters per component, split by kind: adapter factors (A, B; every expert's
    under MoE-LoRA), MoSLoRA mixers, MoE-LoRA routers, and whole tensors trained as they are."""
    seen: set[int] = set()
    counts = {}
    for component, modules in component_modules(model).items():
        kinds = dict.fromkeys(KINDS, 0)
        for module in modules:
            for name, parameter in module.named_parameters():
                if id(parameter) in seen or not parameter.requires_grad:
                    continue
                seen.add(id(parameter))
                kind = next((k for part, k in ADAPTER_KINDS.items() if f"{part}." in f"{name}."), "whole")
                kinds[kind] += getattr(parameter, "ds_numel", parameter.numel())
        counts[component] = kinds
    return counts


def trainable_kinds_table(model: LlavaForConditionalGeneration) -> str:
    """trainable_by_kind as a table (the dry run's)."""
    counts = trainable_by_kind(model)
    lines = [f"{'trainable by kind':<20}" + "".join(f"{kind:>16}" for kind in KINDS)]
    for component, kinds in counts.items():
        lines.append(f"{component:<20}" + "".join(f"{kinds[kind]:>16,}" for kind in KINDS))
    return "\n".join(lines)


def trainable_table(model: LlavaForConditionalGeneration) -> str:
    """A table of trainable parameters per component, for the start of a run."""
    counts = parameter_counts(model)
    counts["total"] = tuple(map(sum, zip(*counts.values())))
    lines = [f"{'component':<16}{'trainable':>14}{'total':>16}{'%':>9}"]
    for component, (trainable, total) in counts.items():
        percent = 100.0 * trainable / total if total else 0.0
        lines.append(f"{component:<16}{trainable:>14,}{total:>16,}{percent:>9.3f}")
    return "\n".join(lines)


def select_dtype(bf16: bool = False, fp16: bool = False) -> torch.dtype:
    """bf16/fp16 when asked for and a GPU is present; fp32 on CPU, where half precision is slow
    and fp16 matmuls are not all supported."""
    if bf16 and fp16:
        raise ValueError("choose one of --bf16 and --fp16")
    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32


# Names a user may give a dtype by (--dtype of chat, eval, merge, vlmeval).
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def inference_device(name: Optional[str] = None) -> str:
    """`name`, or for None / "auto" CUDA when present, else the CPU."""
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def inference_dtype(name: str, device: str) -> torch.dtype:
    """The dtype to load a checkpoint in for answering: `name` from DTYPES, or "auto": bf16 on a
    GPU that supports it, else fp32 (a 7B model is ~14 GB in bf16, ~28 GB in fp32)."""
    if name != "auto":
        try:
            return DTYPES[name]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}") from None
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


def enable_activation_checkpointing(model: LlavaForConditionalGeneration) -> None:
    """Activation checkpointing for the vision tower and the LM. Non-reentrant, so frozen
    embeddings (adapter-only training) need no input-requires-grad workaround."""
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(ACTIVATION_CHECKPOINTING_KWARGS))
    model.config.use_cache = False
