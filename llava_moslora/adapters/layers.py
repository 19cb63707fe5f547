"""Adapter layers that wrap a frozen nn.Linear: the shared base, and LoRA / MoSLoRA.

LoRA:    y = W0 x + s * B A dropout(x)
MoSLoRA: y = W0 x + s * B M A dropout(x), with a trainable (or fixed) r x r mixer M.
Plain LoRA owns no mixer at all, so it costs exactly what PEFT's LoRA costs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig


class AdapterLayer(nn.Module):
    """What every adapter wrapper shares: the frozen base layer, the adapter's input dropout,
    its scale, and the names of the tensors that make up the adapter (saved, loaded, exported)."""

    kind: str = ""
    # Names (relative to the layer) of the tensors that belong to the adapter, in a stable order.
    adapter_tensor_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear modules, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.r = config.r
        self.alpha = config.alpha
        self.use_rslora = config.use_rslora
        self.scaling = config.scaling
        self.adapter_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.merged = False

    def _new_parameter(self, *shape: int, requires_grad: bool = True) -> nn.Parameter:
        weight = self.base_layer.weight
        # Initialise in fp32 (the init functions' statistics are defined there), store in the
        # base layer's dtype and device like PEFT does; a caller may upcast adapter tensors later.
        return nn.Parameter(torch.empty(*shape, device=weight.device, dtype=torch.float32),
                            requires_grad=requires_grad)

    def _finish_init(self) -> None:
        dtype = float_dtype(self.base_layer)
        for name in self.adapter_tensor_names:
            tensor = self.get_parameter(name)
            tensor.data = tensor.data.to(dtype)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        return {name: self.get_parameter(name) for name in self.adapter_tensor_names}

    def delta_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"kind={self.kind}, r={self.r}, alpha={self.alpha}, scaling={self.scaling:.4g}"


def float_dtype(layer: nn.Linear) -> torch.dtype:
    """The dtype of adapter tensors beside `layer`: its weight's, or for a quantized layer
    (bitsandbytes' Linear4bit / Linear8bitLt pack the weight in uint8 / int8) its compute dtype,
    float32 when it has none."""
    if layer.weight.is_floating_point():
        return layer.weight.dtype
    return getattr(layer, "compute_dtype", None) or torch.float32


def _float_weight(layer: nn.Linear) -> torch.Tensor:
    weight = layer.weight
    if not weight.is_floating_point():
        raise ValueError(f"cannot fold an adapter into a quantized {type(layer).__name__}: dequantize the base "
                         "first (model.quantize.dequantize; `llava-moslora merge` does)")
    return weight


def init_mixer_(mixer: torch.Tensor, how: str) -> torch.Tensor:
    """Initialise an r x r mixer in place; `how` is one of AdapterConfig's mixer_init values."""
    r = mixer.shape[0]
    with torch.no_grad():
        if how == "kaiming":  # U(-1/sqrt(r), 1/sqrt(r)), the same rule as A and as nn.Linear
            nn.init.kaiming_uniform_(mixer, a=math.sqrt(5))
        elif how == "orthogonal":
            nn.init.orthogonal_(mixer)
        elif how == "identity":
            mixer.copy_(torch.eye(r))
        elif how == "normal":  # std 1/r, the scale PEFT uses for its Gaussian LoRA init
            nn.init.normal_(mixer, std=1.0 / r)
        elif how == "zero":
            mixer.zero_()
        elif how == "butterfly":  # [[I, I], [I, I]]: the paper's fixed two-subspace mixing
            half = torch.eye(r // 2)
            mixer.copy_(torch.cat([torch.cat([half, half], 1), torch.cat([half, half], 1)], 0))
        else:
            raise ValueError(f"unknown mixer init {how!r}")
    return mixer


class LoraLinear(AdapterLayer):
    """LoRA (config.kind == "lora") or MoSLoRA ("moslora") around a frozen nn.Linear.

    Tensors: lora_A (r, d_in), lora_M (r, r; MoSLoRA only), lora_B (d_out, r). Adapter math runs in
    the adapter's dtype; the result is returned in the base layer's output dtype.
    """

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        if config.kind not in ("lora", "moslora"):
            raise ValueError(f"LoraLinear implements lora and moslora, not {config.kind!r}")
        self.kind = config.kind
        self.lora_A = self._new_parameter(self.r, self.in_features)
        self.lora_B = self._new_parameter(self.out_features, self.r)
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        if config.kind == "moslora":
            self.lora_M = self._new_parameter(self.r, self.r, requires_grad=config.mixer_trainable)
            init_mixer_(self.lora_M, config.mixer_init)
            self.adapter_tensor_names = ("lora_A", "lora_M", "lora_B")
        else:
            self.register_parameter("lora_M", None)
            self.adapter_tensor_names = ("lora_A", "lora_B")
        self._finish_init()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        # Scale the rank-r activation rather than the d_out-wide output: same math, less work.
        h = F.linear(self.adapter_dropout(x).to(self.lora_A.dtype), self.lora_A)
        if self.lora_M is not None:
            h = F.linear(h, self.lora_M)  # h M^T, i.e. M applied to each token's r-vector
        h = F.linear(h * self.scaling, self.lora_B)
        return result + h.to(result.dtype)

    def folded_A(self) -> torch.Tensor:
        """M A in fp32 (A itself for LoRA): the A of the equivalent plain LoRA adapter."""
        A = self.lora_A.detach().float()
        return A if self.lora_M is None else self.lora_M.detach().float() @ A

    def delta_weight(self) -> torch.Tensor:
        """s * B M A in fp32, shape (d_out, d_in)."""
        return (self.lora_B.detach().float() @ self.folded_A()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("adapter is already merged")
        weight = _float_weight(self.base_layer)
        weight.data = (weight.data.float() + self.delta_weight()).to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError("adapter is not merged")
        weight = _float_weight(self.base_layer)
        weight.data = (weight.data.float() - self.delta_weight()).to(weight.dtype)
        self.merged = False
