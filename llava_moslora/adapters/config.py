"""AdapterConfig: what kind of adapter goes where, with which hyperparameters, validated once."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Union

from ..names import ADAPTER_KINDS

AdapterKind = Literal["lora", "moslora", "moelora"]
MixerInit = Literal["kaiming", "orthogonal", "identity", "normal", "zero", "butterfly"]
GateRescale = Literal["none", "sqrt"]

MIXER_INITS = ("kaiming", "orthogonal", "identity", "normal", "zero", "butterfly")
GATE_RESCALES = ("none", "sqrt")

# A list of names matches a module whose full name equals one of them or ends with ".name", and
# each match must be an nn.Linear; a single string is a regular expression that must match the
# full module name (PEFT's rules) and selects the nn.Linear modules among its matches.
TargetSpec = Union[list[str], str, None]


@dataclass
class AdapterConfig:
    """Hyperparameters of one adapter family applied to a set of nn.Linear modules.

    kind: "lora" (B A), "moslora" (B M A with an r x r mixer M) or "moelora" (E experts B_i A_i
    behind a per-token top-k router). The update is scaled by alpha / r, or alpha / sqrt(r) with
    use_rslora. target_modules=None adapts every nn.Linear under the model it is applied to.
    """

    kind: AdapterKind = "moslora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    use_rslora: bool = False
    target_modules: TargetSpec = None
    exclude_modules: TargetSpec = None
    # moslora
    mixer_init: MixerInit = "kaiming"
    mixer_trainable: bool = True
    # moelora (defaults of "A Stronger Mixture of Low-Rank Experts")
    num_experts: int = 20
    top_k: int = 10
    gate_rescale: GateRescale = "none"
    load_balance_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"unknown adapter kind {self.kind!r}; expected one of {ADAPTER_KINDS}")
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ValueError(f"r must be a positive integer, got {self.r!r}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.mixer_init not in MIXER_INITS:
            raise ValueError(f"unknown mixer_init {self.mixer_init!r}; expected one of {MIXER_INITS}")
        if self.kind == "moslora" and self.mixer_init == "butterfly" and self.r % 2:
            raise ValueError(f"mixer_init='butterfly' needs an even r, got r={self.r}")
        if self.gate_rescale not in GATE_RESCALES:
            raise ValueError(f"unknown gate_rescale {self.gate_rescale!r}; expected one of {GATE_RESCALES}")
        if self.kind == "moelora":
            if self.num_experts <= 0:
                raise ValueError(f"num_experts must be positive, got {self.num_experts}")
            if not 0 < self.top_k <= self.num_experts:
                raise ValueError(
                    f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}")
        if self.load_balance_coef < 0:
            raise ValueError(f"load_balance_coef must be >= 0, got {self.load_balance_coef}")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                setattr(self, name, list(value))
            elif value is not None and not isinstance(value, (str, list)):
                raise ValueError(f"{name} must be a list of names, a regex string or None, got {value!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig fields: {unknown}")
        return cls(**data)
