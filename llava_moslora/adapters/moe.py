"""MoE-LoRA linear layer: E rank-r experts behind a per-token top-k router.

    y = W0 x + s * sum_i g_i(x) B_i A_i dropout(x),   g = renormalised top-k of softmax(R x)

All experts are computed at once: the A_i are stacked into one (E*r, d_in) matrix and the B_i
into one (d_out, E*r) matrix, so one matmul gives every expert's rank-r activation, the gates
scale its r-wide chunks, and one matmul projects them back up.

Gate rescaling ("sqrt", Algorithm 1 of "A Stronger Mixture of Low-Rank Experts"): the forward
value stays g_i E_i, the gradient reaching expert i (its A_i and B_i) is scaled by sqrt(g_i)
instead of g_i, and the router's gradient d y / d g_i = E_i is unchanged. `_GatedUpProjection`
implements the up-projection with exactly these gradients in a single pass.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import AdapterConfig
from .layers import AdapterLayer


class _GatedUpProjection(torch.autograd.Function):
    """out = B @ (g (x) h), with the expert-side gradients scaled by `coef(g)`.

    h: (N, E*r) expert activations, gates: (N, E), B: (d_out, E*r).
    Backward, with u = dout @ B:
        grad_h     = coef(g) * u          (per r-chunk)
        grad_B     = dout^T (coef(g) * h)
        grad_gates = sum over each chunk of u * h     (the true derivative: router unchanged)
    coef(g) = g is ordinary autograd; coef(g) = sqrt(g) is gate rescaling.
    """

    @staticmethod
    def forward(ctx, h, gates, B, sqrt_rescale: bool):
        n, e = gates.shape
        gated = (h.view(n, e, -1) * gates.unsqueeze(-1)).view_as(h)
        ctx.save_for_backward(h, gates, B)
        ctx.sqrt_rescale = sqrt_rescale
        return F.linear(gated, B)

    @staticmethod
    def backward(ctx, dout):
        h, gates, B = ctx.saved_tensors
        n, e = gates.shape
        dout = dout.to(B.dtype)
        u = (dout @ B).view(n, e, -1)
        coef = (gates.sqrt() if ctx.sqrt_rescale else gates).unsqueeze(-1)
        grad_h = grad_gates = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_h = (u * coef).view_as(h).to(h.dtype)
        if ctx.needs_input_grad[1]:
            grad_gates = (u * h.view(n, e, -1)).sum(-1).to(gates.dtype)
        if ctx.needs_input_grad[2]:
            grad_B = dout.t() @ (h.view(n, e, -1) * coef).view_as(h)
        return grad_h, grad_gates, grad_B, None


class MoELoraLinear(AdapterLayer):
    """MoE-LoRA around a frozen nn.Linear.

    Tensors: lora_A (E*r, d_in) with expert i in rows [i*r, (i+1)*r), lora_B (d_out, E*r) with
    expert i in the same columns, lora_router.weight (E, d_in). After each forward,
    `last_expert_load` holds the fraction of routing slots each expert received (sums to 1), and,
    when load_balance_coef > 0, `aux_loss` holds the Switch-style balancing loss.
    """

    kind = "moelora"
    adapter_tensor_names = ("lora_A", "lora_B", "lora_router.weight")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        self.num_experts = config.num_experts
        self.top_k = config.top_k
        self.gate_rescale = config.gate_rescale
        self.load_balance_coef = config.load_balance_coef
        e, r = self.num_experts, self.r
        self.lora_A = self._new_parameter(e * r, self.in_features)
        self.lora_B = self._new_parameter(self.out_features, e * r)
        # fan_in of the stacked A is d_in, so this is the per-expert Kaiming bound as well.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        self.lora_router = nn.Linear(self.in_features, e, bias=False,
                                     device=base_layer.weight.device, dtype=torch.float32)
        self._finish_init()
        self.last_expert_load: Optional[torch.Tensor] = None
        self.aux_loss: Optional[torch.Tensor] = None

    def route(self, x2d: torch.Tensor) -> torch.Tensor:
        """Dense (N, E) gates in fp32: softmax over experts, top-k kept and renormalised."""
        logits = self.lora_router(x2d.to(self.lora_router.weight.dtype)).float()
        probs = logits.softmax(dim=-1)
        top_values, top_index = probs.topk(self.top_k, dim=-1)
        top_values = top_values / top_values.sum(dim=-1, keepdim=True)
        gates = torch.zeros_like(probs).scatter(1, top_index, top_values)
        with torch.no_grad():
            counts = torch.bincount(top_index.reshape(-1), minlength=self.num_experts).float()
            self.last_expert_load = counts / max(top_index.numel(), 1)
        self.aux_loss = None
        if self.load_balance_coef > 0 and self.training:
            # E * sum_i f_i P_i: f_i (routing fraction) carries no gradient, P_i (mean prob) does.
            self.aux_loss = self.load_balance_coef * self.num_experts * (
                self.last_expert_load * probs.mean(dim=0)).sum()
        return gates

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        x2d = x.reshape(-1, self.in_features)
        gates = self.route(x2d)
        h = F.linear(self.adapter_dropout(x2d).to(self.lora_A.dtype), self.lora_A) * self.scaling
        out = _GatedUpProjection.apply(h, gates.to(h.dtype), self.lora_B, self.gate_rescale == "sqrt")
        return result + out.view(*x.shape[:-1], self.out_features).to(result.dtype)

    def expert_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-expert views: A as (E, r, d_in), B as (E, d_out, r)."""
        e, r = self.num_experts, self.r
        A = self.lora_A.view(e, r, self.in_features)
        B = self.lora_B.view(self.out_features, e, r).permute(1, 0, 2)
        return A, B

    def delta_weight(self) -> torch.Tensor:
        raise ValueError("a MoE-LoRA update depends on each token's gates, so it has no single "
                         "delta weight and cannot be merged into the base layer")


def moe_aux_loss(model: nn.Module) -> Optional[torch.Tensor]:
    """Sum of the load-balancing losses of the last forward (None when none was computed)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(m, MoELoraLinear) and m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None
