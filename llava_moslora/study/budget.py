"""Equal trainable-parameter budgets: the rank each variant gets so that its adapters cost what
the reference variant's do.

The budget is the adapter parameter count of the reference variant (LoRA at rank r on the
language model). Every other variant gets the largest rank whose adapters do not cost more:
MoSLoRA at rank r adds an r x r mixer per layer (r^2 more than LoRA), MoE-LoRA with E experts of
rank r costs E x LoRA(r) plus an E x d_in router per layer. Counts come from the real injection
(adapters.apply_adapters on the language model built on the meta device, no weights loaded),
so they are exact for whatever targets the flags select. alpha follows the rank (alpha = scale x r)
so every variant has the same scale alpha / r.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import torch

from ..adapters import AdapterConfig, apply_adapters


@dataclass
class Allocation:
    variant: str
    kind: str
    r: int
    alpha: float
    num_experts: int  # 1 unless MoE-LoRA
    adapter_parameters: int
    budget: int  # the reference's adapter parameters (a grid's tolerance may let a variant exceed it)
    matched: bool  # False when the grid pinned lora_r for this variant
    unfit: Optional[str] = None  # why the variant cannot run within this budget (then r is 0)

    @property
    def fits(self) -> bool:
        return self.unfit is None

    @property
    def ratio(self) -> float:
        return self.adapter_parameters / self.budget

    @property
    def rank_text(self) -> str:
        return f"{self.num_experts} x {self.r}" if self.kind == "moelora" else str(self.r)


class OverBudget(ValueError):
    """Even rank 1 of a variant costs more than the budget."""


@lru_cache(maxsize=4)
def _meta_language_model(llm_path: str, trust_remote_code: bool = False):
    """The language model's body (what adapters are put on; no head) on the meta device, from its
    config; a whole LLaVA's (llava-hf) from its text config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(llm_path, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return getattr(model, model.base_model_prefix)  # as model/builder.py takes it


def adapter_parameters(llm_path: str, config: AdapterConfig, trust_remote_code: bool = False) -> int:
    """Parameters the adapters of `config` add to the language model at `llm_path`."""
    import copy

    model = copy.deepcopy(_meta_language_model(str(llm_path), trust_remote_code))
    # The count does not depend on the mixer's initial values; kaiming works on the meta device.
    apply_adapters(model, AdapterConfig.from_dict({**config.to_dict(), "mixer_init": "kaiming"}))
    return sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)


def match_rank(llm_path: str, config: AdapterConfig, budget: int, trust_remote_code: bool = False) -> int:
    """The largest rank for which `config`'s adapters cost at most `budget` parameters."""
    def cost(r: int) -> int:
        return adapter_parameters(llm_path, AdapterConfig.from_dict({**config.to_dict(), "r": r}), trust_remote_code)

    if cost(1) > budget:
        raise OverBudget(f"a {config.kind} adapter of rank 1 already costs {cost(1):,} parameters, over the "
                         f"budget of {budget:,}; raise budget.r or use fewer experts")
    low, high = 1, 2
    while cost(high) <= budget:  # costs grow with r: double, then bisect
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if cost(middle) <= budget else (low, middle)
    return low
