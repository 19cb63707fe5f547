"""QLoRA: the language model's linear layers held in 4 or 8 bits (bitsandbytes), adapters in float.

Only the LLM's decoder layers are quantized (lm_head, the embeddings, the vision tower and the
projector stay in float), through transformers' own BitsAndBytesConfig loading. The adapter
layers then wrap bitsandbytes' Linear4bit / Linear8bitLt, which are nn.Linear subclasses; their
tensors are created in the layer's compute dtype, not in the packed weight's uint8 / int8.
A stage checkpoint records the quantization (Recipe.quantization) and is loaded quantized
again by default; `merge` dequantizes the base (transformers' dequantize_and_replace) before
folding the adapters in.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

from ..names import BITS

if TYPE_CHECKING:  # torch is imported where it is used: `eval --help` and friends stay light
    import torch

QUANT_TYPES = ("nf4", "fp4")
NOT_QUANTIZED = ["lm_head"]  # the output layer stays in float, as in QLoRA


@dataclass(frozen=True)
class Quantization:
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"quantized bits must be 4 or 8, got {self.bits}")
        if self.quant_type not in QUANT_TYPES:
            raise ValueError(f"quant_type must be one of {QUANT_TYPES}, got {self.quant_type!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> Optional["Quantization"]:
        return cls(**data) if data else None

    def bnb_config(self, compute_dtype: torch.dtype):
        import importlib.util

        from transformers import BitsAndBytesConfig

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError(f"--bits {self.bits} needs bitsandbytes: pip install 'llava-moslora[qlora]' "
                              "(bash scripts/setup.sh installs it)")
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTIZED)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant, bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=NOT_QUANTIZED)


def quantization_from_flags(bits: int, quant_type: str = "nf4", double_quant: bool = True) -> Optional[Quantization]:
    """--bits 16 (the default) means none."""
    if bits not in BITS:
        raise ValueError(f"--bits must be one of {BITS}, got {bits}")
    return None if bits == 16 else Quantization(bits, quant_type, double_quant)


def loading_quantization(bits: Optional[int]):
    """load_checkpoint's quantization for --bits of chat / eval / web: None = as the checkpoint
    was trained (quantized after QLoRA), 16 = float, 4 / 8 = so."""
    return "recorded" if bits is None else quantization_from_flags(bits)




def load_device() -> str:
    """Where this process loads quantized weights: its own GPU under a launcher, else the CPU
    (bitsandbytes quantizes as the weights land on the device)."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def is_quantized_linear(module: "torch.nn.Module") -> bool:
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def accept_own_checkpoints(model: "torch.nn.Module") -> None:
    """Let the model load back a state dict it saved. DeepSpeed's engine checkpoint (what
    --resume_from_checkpoint reads) holds every module's state, and bitsandbytes' 4-bit layers
    save their quantization constants beside the weight ("weight.absmax", ...) but do not take
    them back, so a strict load fails. The constants are the ones the layer already has (it was
    quantized from the same base file): they are dropped on load."""
    def drop_quant_state(module, state_dict, prefix, *args, **kwargs):
        for key in [k for k in state_dict if k.startswith(prefix + "weight.")]:
            del state_dict[key]

    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            module._register_load_state_dict_pre_hook(drop_quant_state, with_module=True)


def dequantize(model: "torch.nn.Module", quantization: Quantization, dtype: "torch.dtype") -> "torch.nn.Module":
    """Every quantized linear layer of `model` replaced by an nn.Linear holding its dequantized
    weight in `dtype` (adapter layers keep wrapping them)."""
    from transformers.integrations.bitsandbytes import dequantize_and_replace

    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            # After an inference forward on the CPU, bitsandbytes keeps the weight repacked for its
            # bf16 kernel; saving undoes that, and dequantizing needs the saved layout.
            module.state_dict()
    return dequantize_and_replace(model, quantization.bnb_config(dtype), dtype=dtype)
