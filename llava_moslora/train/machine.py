"""What this rank's machine decides before a stage is parsed and built: its precision, from the
GPU it sees (bf16 and tf32 from Ampere on, fp16 before), or the CPU in fp32 with gloo and
DeepSpeed's CPU accelerator; and joining the process group before the model is built."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from .preflight import flag_value

CPU_FLAGS = ["--use_cpu", "True"]
LAUNCHED = ("LOCAL_RANK", "WORLD_SIZE")  # set by torchrun and the deepspeed launcher
GPU_ONLY_FLAGS = ("--bf16", "--fp16", "--tf32")


def precision_chosen(argv: Sequence[str], flags: Sequence[str] = GPU_ONLY_FLAGS) -> bool:
    """Whether the command gives any of these precision flags (which then win over the GPU's choice)."""
    return any(flag_value(argv, flag) is not None for flag in flags)


def precision_for(capability: tuple[int, int]) -> list[str]:
    """The precision flags for a GPU of this compute capability: bf16 and tf32 from Ampere (8.0)
    on, fp16 before it (V100 7.0, T4 7.5 have neither bf16 nor tf32; TrainingArguments refuses them)."""
    return ["--bf16", "True", "--tf32", "True"] if capability[0] >= 8 else ["--fp16", "True"]


def adapt_to_machine(argv: list[str]) -> list[str]:
    """This rank's precision, from the GPU it sees, unless the command chose one (--bf16 / --fp16 /
    --tf32); without CUDA: the CPU in fp32 whatever precision flags were given."""
    if torch.cuda.is_available():
        if precision_chosen(argv):
            return argv
        device = int(os.environ.get("LOCAL_RANK", "0"))
        return precision_for(torch.cuda.get_device_capability(device)) + argv
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when DeepSpeed is first imported
    backend = ["--ddp_backend", "gloo"] if any(name in os.environ for name in LAUNCHED) else []
    dropped = [flag for flag in GPU_ONLY_FLAGS if flag_value(argv, flag) is not None]
    if int(os.environ.get("RANK", "0")) == 0:
        ignoring = f"; ignoring {' '.join(dropped)}" if dropped else ""
        gloo = "gloo, " if backend else ""
        print(f"[llava-moslora] no CUDA device: training on the CPU ({gloo}DeepSpeed's CPU accelerator, fp32{ignoring})",
              flush=True)
    return CPU_FLAGS + backend + without_flags(argv, GPU_ONLY_FLAGS)


def without_flags(argv: list[str], flags: Sequence[str]) -> list[str]:
    """argv minus the given flags and their values ("--bf16 True", "--bf16=True", "--bf16", "--deepspeed F")."""
    kept, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        kept.append(arg)
    return kept


def join_process_group(training_args) -> None:
    """Join the run's process group before the model is built: under ZeRO-3 transformers builds it
    in deepspeed.zero.Init, which sizes its partitions by DeepSpeed's view of the group. On GPUs
    accelerate sets that up; with --use_cpu it starts torch's group only, which DeepSpeed adopts here."""
    training_args.world_size  # accelerate's PartialState: torch.distributed under torchrun
    if training_args.deepspeed:
        import deepspeed

        deepspeed.init_distributed()
