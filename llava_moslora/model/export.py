"""`llava-moslora merge` and `llava-moslora export-peft`: stage checkpoints to portable formats.

merge: a standalone llava-hf directory (adapters folded into the base weights) that plain
`LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` load.
export-peft: a PEFT LoRA adapter over the LLaVA model, every other trained tensor (the projector,
a fully tuned vision tower, ...) carried whole as PEFT's modules_to_save. Both refuse MoE-LoRA,
whose update depends on each token's gates.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..adapters import MoELoraLinear, adapter_state_dict, export_peft, merge_adapters
from ..adapters.inject import iter_adapter_layers
from .builder import make_processor, set_chat_template
from .checkpoint import load_checkpoint
from .recipe import TRAINABLE_FILE, Recipe
from .quantize import Quantization, dequantize
from .tuning import DTYPES



def _refuse_moe(bundle, what: str) -> None:
    if any(isinstance(m, MoELoraLinear) for m in bundle.model.modules()):
        raise SystemExit(f"this checkpoint has MoE-LoRA adapters, which cannot be {what}: each token's "
                         "router gates change the update. Use the stage checkpoint itself "
                         "(load_checkpoint, `llava-moslora chat/eval --model DIR`).")


def merge_checkpoint(checkpoint, out_dir, dtype: str = "auto") -> Path:
    """A QLoRA checkpoint is loaded quantized (as it was trained), its base dequantized, then the
    adapters folded in: the merged model computes what the quantized one did, in float."""
    if Recipe.load(checkpoint).trust_remote_code:  # said before minutes of loading
        raise SystemExit(f"{checkpoint}'s language model runs code from its own folder (--trust_remote_code, as "
                         "InternLM2), and transformers cannot load such a model as a merged LLaVA's language model. "
                         "Use the stage checkpoint itself (`llava-moslora chat/eval --model DIR`).")
    bundle = load_checkpoint(checkpoint)
    _refuse_moe(bundle, "merged")
    quantization = Quantization.from_dict(bundle.recipe.quantization)
    if quantization is not None:
        dequantize(bundle.model, quantization, torch.float32)
        for config in (bundle.model.config, bundle.model.config.text_config):  # a float model now
            if hasattr(config, "quantization_config"):
                del config.quantization_config
    merge_adapters(bundle.model)
    if dtype == "auto":
        dtype = str(getattr(bundle.model.config.text_config, "dtype", None) or "float32").replace("torch.", "")
    bundle.model.to(DTYPES.get(dtype, torch.float32))
    out = Path(out_dir)
    set_chat_template(bundle.tokenizer, bundle.recipe.template)
    bundle.model.save_pretrained(out)
    bundle.tokenizer.save_pretrained(out)
    bundle.image_processor.save_pretrained(out)
    make_processor(bundle.model.config, bundle.tokenizer, bundle.image_processor).save_pretrained(out)
    # The template travels with it (chat and eval read it); nothing here is needed to load.
    replace(bundle.recipe, llm_adapter=None, vision_adapter=None, trained_tensors=[], quantization=None,
            tune_vision_tower="frozen", tune_language_model="frozen", tune_mm_projector="frozen").save(out)
    return out


def changed_from_base(checkpoint: Path, names: Sequence[str], base: Path) -> list[str]:
    """The trained tensors of a stage checkpoint that `base` does not already hold as they are
    (what an earlier stage trained is in a merged stage-1 base). The base is loaded through
    transformers, which maps its saved key names to the model's, on the CPU for the comparison."""
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    try:
        reference = LlavaForConditionalGeneration.from_pretrained(base, dtype="auto", device_map={"": "cpu"})
    except (OSError, ValueError) as error:
        raise ValueError(f"--base {base} does not load as a llava-hf model ({error}); give the directory the adapter "
                         "will be loaded on (`llava-moslora merge` of the stage-1 checkpoint)") from None
    state = reference.state_dict()
    changed = []
    with safe_open(str(Path(checkpoint) / TRAINABLE_FILE), framework="pt") as trained:
        for name in names:
            theirs, ours = state.get(name), trained.get_tensor(name)
            if theirs is None or theirs.shape != ours.shape or not torch.equal(ours.to(theirs.dtype), theirs):
                changed.append(name)
    return changed


def whole_modules(model: nn.Module, trained: Sequence[str], needed: Sequence[str]) -> list[str]:
    """The modules to carry whole (PEFT's modules_to_save) so that every `needed` tensor travels:
    for each, its largest enclosing module holding only `trained` tensors and no adapter layer (a
    component trained whole is one entry). ValueError names the tensors no module can carry (a
    trained weight inside a LoRA-adapted layer, which PEFT keeps frozen)."""
    adapted = [name for name, _ in iter_adapter_layers(model)]
    keys = list(model.state_dict())
    trained_set = set(trained)

    def carriable(name: str) -> bool:
        owned = [key for key in keys if key.startswith(name + ".")]
        return bool(owned) and set(owned) <= trained_set and not any(
            layer == name or layer.startswith(name + ".") or name.startswith(layer + ".") for layer in adapted)

    found, stranded = [], []
    for tensor in needed:
        parts = tensor.split(".")[:-1]
        module = next((name for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if carriable(name)),
                      None)
        if module is None:
            stranded.append(tensor)
        elif module not in found:
            found.append(module)
    if stranded:
        raise ValueError(f"{len(stranded)} trained tensor(s) differ from the base and sit where PEFT cannot carry "
                         f"them (inside LoRA-adapted layers): {', '.join(stranded[:6])}"
                         f"{' ...' if len(stranded) > 6 else ''}")
    return found


def export_checkpoint(checkpoint, out_dir, base) -> Path:
    """The stage checkpoint's adapters as a PEFT LoRA adapter over `base` (recorded as its
    base_model_name_or_path); every other trained tensor that `base` does not hold as trained
    goes in modules_to_save, or the export is refused naming it."""
    bundle = load_checkpoint(checkpoint)
    _refuse_moe(bundle, "exported as LoRA")
    adapters = set(adapter_state_dict(bundle.model))
    others = [name for name in bundle.recipe.trained_tensors if name not in adapters]
    try:
        needed = changed_from_base(Path(checkpoint), others, Path(base))
        modules = whole_modules(bundle.model, bundle.recipe.trained_tensors, needed)
    except ValueError as error:
        raise SystemExit(f"cannot export {checkpoint} to PEFT: {error}") from None
    return export_peft(bundle.model, out_dir, base_model_name_or_path=str(Path(base).resolve()),
                       modules_to_save=modules)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="stage checkpoint directory (llava_moslora.json + trainable.safetensors)")
    parser.add_argument("--out", required=True, help="output directory")
    if name == "export-peft":
        parser.add_argument("--base", required=True,
                            help="the llava-hf model the adapter is loaded on, recorded as base_model_name_or_path: "
                                 "the `llava-moslora merge` of the stage-1 checkpoint this stage started from")
    if name == "merge":
        parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                            help="weights dtype of the merged model (auto: the language model's)")


def run(args: argparse.Namespace, name: str) -> int:
    if name == "merge":
        out = merge_checkpoint(args.checkpoint, args.out, args.dtype)
        print(f"merged model written to {out}; load it with LlavaForConditionalGeneration.from_pretrained")
    else:
        out = export_checkpoint(args.checkpoint, args.out, args.base)
        print(f"PEFT adapter written to {out}; load it with PeftModel.from_pretrained("
              f"LlavaForConditionalGeneration.from_pretrained('{args.base}'), '{out}')")
    return 0
