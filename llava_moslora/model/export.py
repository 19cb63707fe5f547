"""`llava-moslora merge` and `llava-moslora export-peft`: stage checkpoints to portable formats.

merge: a standalone llava-hf directory (adapters folded into the base weights) that plain
`LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` load.
export-peft: a PEFT LoRA adapter over the LLaVA model, the tuned projector carried as PEFT's
modules_to_save. Both refuse MoE-LoRA, whose update depends on each token's gates.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from ..adapters import MoELoraLinear, export_peft, merge_adapters
from .builder import make_processor, set_chat_template
from .checkpoint import load_checkpoint
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


def export_checkpoint(checkpoint, out_dir) -> Path:
    bundle = load_checkpoint(checkpoint)
    _refuse_moe(bundle, "exported as LoRA")
    return export_peft(bundle.model, out_dir, modules_to_save=["model.multi_modal_projector"])


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--checkpoint", required=True, help="stage checkpoint directory (llava_moslora.json + trainable.safetensors)")
    parser.add_argument("--out", required=True, help="output directory")
    if name == "merge":
        parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                            help="weights dtype of the merged model (auto: the language model's)")


def run(args: argparse.Namespace, name: str) -> int:
    if name == "merge":
        out = merge_checkpoint(args.checkpoint, args.out, args.dtype)
        print(f"merged model written to {out}; load it with LlavaForConditionalGeneration.from_pretrained")
    else:
        out = export_checkpoint(args.checkpoint, args.out)
        print(f"PEFT adapter written to {out}; load it with PeftModel.from_pretrained(<stage-1 merged LLaVA>, '{out}')")
    return 0
