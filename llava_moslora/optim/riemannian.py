"""Riemannian preconditioning of low-rank adapter gradients, as backward hooks: each factor's
gradient is replaced by its least-squares step with the other factors fixed (Zhang & Pilanci 2024;
LoRA, MoSLoRA's three factors, each MoE-LoRA expert), before DeepSpeed ZeRO-1/2 or any optimizer
sees it. The rules and why hooks: docs/ARCHITECTURE.md, "Riemannian preconditioning"."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..adapters import LoraLinear, MoELoraLinear, iter_adapter_layers


class RiemannianHandle:
    """The registered gradient hooks; `.remove()` takes them all off again."""

    def __init__(self, hooks: list, parameters: list[str]) -> None:
        self._hooks = hooks
        self.parameters = parameters  # names of the preconditioned tensors, for logging

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def __len__(self) -> int:
        return len(self._hooks)


def _full(tensor: torch.Tensor, name: str) -> torch.Tensor:
    # ZeRO-3 marks every parameter it manages with ds_status and empties it between uses.
    if hasattr(tensor, "ds_status") or tensor.numel() == 0:
        raise RuntimeError(
            f"Riemannian preconditioning needs the full adapter factor {name!r}, but it is "
            "partitioned (DeepSpeed ZeRO-3). Use ZeRO-1/2, or train without --riemannian.")
    return tensor.detach()


def _damped_inverse(gram: torch.Tensor, reg: float) -> torch.Tensor:
    """(gram + reg I)^-1 for a (batch of) symmetric r x r gram matrix, which it overwrites.

    Inverting the r x r matrix and then multiplying costs O(r^3) + one GEMM, where a solve
    against the d (4096-11008) right-hand sides runs d triangular solves: 2-4x slower on a CPU.
    inv_ex does not check for singularity, so it never syncs a GPU; reg > 0 keeps it regular.
    """
    gram.diagonal(dim1=-2, dim2=-1).add_(reg)
    return torch.linalg.inv_ex(gram)[0]


def _compute_dtype(grad: torch.Tensor) -> torch.dtype:
    return torch.promote_types(grad.dtype, torch.float32)


def _lora_hooks(name: str, layer: LoraLinear, reg: float) -> dict[str, Callable]:
    def effective_B(dtype):  # B M, or B for plain LoRA
        B = _full(layer.lora_B, f"{name}.lora_B").to(dtype)
        return B if layer.lora_M is None else B @ layer.lora_M.detach().to(dtype)

    def effective_A(dtype):  # M A, or A
        A = _full(layer.lora_A, f"{name}.lora_A").to(dtype)
        return A if layer.lora_M is None else layer.lora_M.detach().to(dtype) @ A

    def precondition_A(grad):
        dtype = _compute_dtype(grad)
        B = effective_B(dtype)
        return (_damped_inverse(B.T @ B, reg) @ grad.to(dtype)).to(grad.dtype)

    def precondition_B(grad):
        dtype = _compute_dtype(grad)
        A = effective_A(dtype)
        return (grad.to(dtype) @ _damped_inverse(A @ A.T, reg)).to(grad.dtype)

    def precondition_M(grad):
        dtype = _compute_dtype(grad)
        A = _full(layer.lora_A, f"{name}.lora_A").to(dtype)
        B = _full(layer.lora_B, f"{name}.lora_B").to(dtype)
        return (_damped_inverse(B.T @ B, reg) @ grad.to(dtype) @ _damped_inverse(A @ A.T, reg)).to(grad.dtype)

    hooks = {"lora_A": precondition_A, "lora_B": precondition_B}
    if layer.lora_M is not None:
        hooks["lora_M"] = precondition_M
    return hooks


def _moe_hooks(name: str, layer: MoELoraLinear, reg: float) -> dict[str, Callable]:
    e, r = layer.num_experts, layer.r

    def precondition_A(grad):  # grad: (E*r, d_in); expert i owns rows i*r:(i+1)*r
        dtype = _compute_dtype(grad)
        _full(layer.lora_B, f"{name}.lora_B")
        _, B = layer.expert_factors()  # (E, d_out, r)
        B = B.detach().to(dtype)
        out = _damped_inverse(B.transpose(1, 2) @ B, reg) @ grad.to(dtype).view(e, r, -1)
        return out.reshape(grad.shape).to(grad.dtype)

    def precondition_B(grad):  # grad: (d_out, E*r); expert i owns columns i*r:(i+1)*r
        dtype = _compute_dtype(grad)
        _full(layer.lora_A, f"{name}.lora_A")
        A, _ = layer.expert_factors()  # (E, r, d_in)
        A = A.detach().to(dtype)
        d_out = grad.shape[0]
        per_expert = grad.to(dtype).view(d_out, e, r).transpose(0, 1)  # (E, d_out, r)
        out = per_expert @ _damped_inverse(A @ A.transpose(1, 2), reg)  # grams are symmetric
        return out.transpose(0, 1).reshape(grad.shape).to(grad.dtype)

    return {"lora_A": precondition_A, "lora_B": precondition_B}


def attach_riemannian(model: nn.Module, reg: float = 1e-6) -> RiemannianHandle:
    """Register gradient hooks that Riemannian-precondition every trainable adapter factor.

    Works with any torch optimizer and DeepSpeed ZeRO-1/2; call `.remove()` on the returned
    handle to detach. Raises ValueError when the model has no LoRA/MoSLoRA/MoE-LoRA layers.
    """
    if not reg > 0:
        raise ValueError(f"reg must be > 0 (LoRA's B starts at zero, so its gram is singular "
                         f"until it has trained), got {reg}")
    hooks, names = [], []
    for name, layer in iter_adapter_layers(model):
        if isinstance(layer, MoELoraLinear):
            preconditioners = _moe_hooks(name, layer, reg)
        elif isinstance(layer, LoraLinear):
            preconditioners = _lora_hooks(name, layer, reg)
        else:  # pragma: no cover - every adapter layer is one of the two
            raise TypeError(f"no Riemannian preconditioner for {type(layer).__name__}")
        for tensor_name, fn in preconditioners.items():
            tensor = layer.get_parameter(tensor_name)
            if tensor.requires_grad:
                _full(tensor, f"{name}.{tensor_name}")
                hooks.append(tensor.register_hook(fn))
                names.append(f"{name}.{tensor_name}")
    if not names:
        raise ValueError("attach_riemannian found no trainable adapter factors in the model; "
                         "apply LoRA, MoSLoRA or MoE-LoRA adapters first")
    return RiemannianHandle(hooks, names)
