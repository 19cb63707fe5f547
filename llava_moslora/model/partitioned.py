"""ZeRO-3 partitioned parameters (built under deepspeed.zero.Init): each rank holds a slice, so
code that reads or writes whole tensors gathers them first. Plain parameters pass through."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


def is_partitioned(parameter: torch.Tensor) -> bool:
    return hasattr(parameter, "ds_id")


def full_shape(parameter: torch.Tensor) -> torch.Size:
    """The shape of the whole tensor (a partitioned one's local data is empty)."""
    return getattr(parameter, "ds_shape", parameter.shape)


@contextlib.contextmanager
def whole(parameters: Iterable[torch.Tensor], modify: bool = False) -> Iterator[None]:
    """The parameters gathered whole while the block runs; every rank must enter it (the gather
    is collective). modify=True scatters rank 0's values back afterwards, so each rank must
    compute the same change."""
    partitioned = [p for p in parameters if is_partitioned(p)]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


@contextlib.contextmanager
def outside_zero3() -> Iterator[None]:
    """While open, transformers constructs modules whole even when a ZeRO-3 config is active (it
    otherwise wraps every construction in zero.Init and initialises the weights there). For the
    LLaVA shell: built on the meta device, its parts replaced at once by the loaded ones."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref  # no public getter; set/unset are public
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def partitioned_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes this rank holds, bytes whole) of the model's partitioned parameters; (0, 0) when none is."""
    held = whole_size = 0
    for parameter in model.parameters():
        if is_partitioned(parameter):  # its .data is a placeholder; ds_tensor is this rank's slice
            held += parameter.ds_tensor.numel() * parameter.element_size()
            whole_size += parameter.ds_numel * parameter.element_size()
    return held, whole_size
