"""Command-line settings of the model room, as an HfArgumentParser dataclass.

Names follow LLaVA's train.py where it had one (--model_name_or_path, --vision_tower,
--mm_projector_type, --mm_vision_select_layer, --lora_r, --lora_alpha, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..adapters import AdapterConfig
from ..towers import FEATURE_HELP
from .recipe import TUNE_MODES, check_tune_modes


def _targets(value: Optional[str]):
    """"q_proj,v_proj" -> a list of names; anything with regex characters -> one regex."""
    if not value:
        return None
    if any(c in value for c in "*()[]|\\^$+?"):
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=None, metadata={"help": "Language model: hub id or local path (e.g. lmsys/vicuna-7b-v1.5)."})
    vision_tower: str = field(default=None, metadata={"help": "CLIP or SigLIP vision tower: hub id or local path (e.g. openai/clip-vit-large-patch14-336)."})
    mm_projector_type: str = field(default="mlp2x_gelu", metadata={"help": "Projector: mlp2x_gelu (LLaVA-1.5) or linear."})
    mm_vision_select_layer: int = field(default=-2, metadata={"help": "Vision tower hidden layer fed to the projector."})
    mm_vision_select_feature: str = field(default="auto", metadata={"help": FEATURE_HELP})
    template: str = field(default="vicuna_v1", metadata={"help": "Conversation template: plain (stage 1), vicuna_v1, llama3, chatml, XTuner's llama3_chat, internlm2_chat, or moelora_llava (the MoE-LoRA paper's code)."})
    tune_vision_tower: str = field(default="frozen", metadata={"help": "frozen | full | adapter"})
    tune_mm_projector: str = field(default="full", metadata={"help": "frozen | full"})
    tune_language_model: str = field(default="frozen", metadata={"help": "frozen | full | adapter"})
    adapter: str = field(default="moslora", metadata={"help": "Adapter kind for adapted components: lora | moslora | moelora."})
    lora_r: int = field(default=64, metadata={"help": "Adapter rank for the language model."})
    lora_alpha: float = field(default=128.0, metadata={"help": "Adapter alpha for the language model (scale alpha/r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapter input."})
    use_rslora: bool = field(default=False, metadata={"help": "Scale by alpha/sqrt(r) instead of alpha/r."})
    lora_target_modules: Optional[str] = field(default=None, metadata={"help": "Comma-separated module names or one regex; default: every nn.Linear of the component."})
    lora_exclude_modules: Optional[str] = field(default=None, metadata={"help": "Comma-separated module names or one regex to leave alone."})
    mixer_init: str = field(default="kaiming", metadata={"help": "MoSLoRA mixer init: kaiming | orthogonal | identity | normal | zero | butterfly."})
    mixer_trainable: bool = field(default=True, metadata={"help": "Train the MoSLoRA mixer (false: fixed mixing)."})
    num_experts: int = field(default=20, metadata={"help": "MoE-LoRA experts per layer."})
    top_k: int = field(default=10, metadata={"help": "MoE-LoRA experts used per token."})
    gate_rescale: str = field(default="none", metadata={"help": "MoE-LoRA gate rescaling: none | sqrt (the g in gRSGD/gAdamW)."})
    load_balance_coef: float = field(default=0.0, metadata={"help": "MoE-LoRA load-balancing loss coefficient (0 as in the paper)."})
    vision_lora_r: int = field(default=64, metadata={"help": "Adapter rank for the vision tower."})
    vision_lora_alpha: float = field(default=16.0, metadata={"help": "Adapter alpha for the vision tower."})
    vision_lora_target_modules: Optional[str] = field(default=None, metadata={"help": "Vision tower adapter targets (as --lora_target_modules)."})
    vision_adapter: Optional[str] = field(default=None, metadata={"help": "Adapter kind for the vision tower: lora | moslora | moelora (default: --adapter; the MoSLoRA paper's InternLM2 run kept the ViT's LoRA without a mixer)."})
    bits: int = field(default=16, metadata={"help": "Language model weights: 16 (as stored), or 8 / 4 (bitsandbytes, QLoRA: adapters train on the quantized base)."})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA) | fp4."})
    double_quant: bool = field(default=True, metadata={"help": "Quantize the 4-bit quantization constants too (QLoRA's double quantization)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the checkpoint's repository."})
    attn_implementation: Optional[str] = field(default=None, metadata={"help": "Attention kernel: sdpa | eager | flash_attention_2 (GPUs; with --packing it attends within each sample by varlen) | another transformers knows (default: transformers' choice)."})

    def adapter_config(self, component: str) -> AdapterConfig:
        vision = component == "vision_tower"
        return AdapterConfig(
            kind=(self.vision_adapter or self.adapter) if vision else self.adapter,
            r=self.vision_lora_r if vision else self.lora_r,
            alpha=self.vision_lora_alpha if vision else self.lora_alpha, dropout=self.lora_dropout,
            use_rslora=self.use_rslora,
            target_modules=_targets(self.vision_lora_target_modules if vision else self.lora_target_modules),
            exclude_modules=None if vision else _targets(self.lora_exclude_modules),
            mixer_init=self.mixer_init, mixer_trainable=self.mixer_trainable, num_experts=self.num_experts,
            top_k=self.top_k, gate_rescale=self.gate_rescale, load_balance_coef=self.load_balance_coef)

    def tune_settings(self) -> dict:
        """The recipe fields these arguments decide: tune modes and adapter configs."""
        settings = {f"tune_{c}": getattr(self, f"tune_{c}") for c in TUNE_MODES}
        check_tune_modes(settings)
        settings["llm_adapter"] = (self.adapter_config("language_model").to_dict()
                                   if self.tune_language_model == "adapter" else None)
        settings["vision_adapter"] = (self.adapter_config("vision_tower").to_dict()
                                      if self.tune_vision_tower == "adapter" else None)
        quantization = self.quantization()
        if quantization is not None and self.tune_language_model == "full":
            raise ValueError(f"--bits {self.bits} with --tune_language_model full: quantized weights cannot be "
                             "trained; use --tune_language_model adapter (QLoRA) or --bits 16")
        settings["quantization"] = quantization.to_dict() if quantization else None
        return settings

    def quantization(self):
        from .quantize import quantization_from_flags

        return quantization_from_flags(self.bits, self.quant_type, self.double_quant)
