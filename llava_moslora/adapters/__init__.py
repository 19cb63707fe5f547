"""Adapters for any torch model with nn.Linear layers: LoRA, MoSLoRA and MoE-LoRA.

Nothing here knows about images, tokens or LLaVA.
"""
from .config import ADAPTER_KINDS, GATE_RESCALES, MIXER_INITS, AdapterConfig
from .export import export_peft
from .inject import apply_adapters, iter_adapter_layers, merge_adapters
from .layers import AdapterLayer, LoraLinear, init_mixer_
from .moe import MoELoraLinear, moe_aux_loss
from .state import adapter_state_dict, load_adapter_state_dict

__all__ = [
    "ADAPTER_KINDS", "GATE_RESCALES", "MIXER_INITS", "AdapterConfig", "AdapterLayer", "LoraLinear",
    "MoELoraLinear", "adapter_state_dict", "apply_adapters", "export_peft", "init_mixer_",
    "iter_adapter_layers", "load_adapter_state_dict", "merge_adapters", "moe_aux_loss",
]
