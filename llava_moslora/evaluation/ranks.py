"""The ranks of an evaluation under torchrun (eval/run.sh with NUM_GPUS > 1): joining the process
group with each rank on its own GPU, how long ranks wait for each other, and how they learn that
every rank's share of a job succeeded. One process without torchrun is rank 0 of 1.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Callable, TypeVar

DEFAULT_TIMEOUT_MINUTES = 180  # EVAL_TIMEOUT_MINUTES: how long a rank waits at a collective

T = TypeVar("T")


class RankFailed(RuntimeError):
    """Another rank's share of the job failed (that rank reports its own error)."""


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def collective_timeout() -> timedelta:
    """How long ranks wait for each other: rank 0 scores with judges (MM-Vet, MathVista) before
    the others pass the barrier, and on a resumed run a rank with nothing left waits there from
    the start, so NCCL's 10-minute default would abort a healthy run."""
    value = os.environ.get("EVAL_TIMEOUT_MINUTES", str(DEFAULT_TIMEOUT_MINUTES))
    try:
        minutes = float(value)
    except ValueError:
        raise ValueError(f"EVAL_TIMEOUT_MINUTES={value}: give a number of minutes") from None
    return timedelta(minutes=minutes)


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Under torchrun: this rank's GPU made the current device (so "cuda" is
    it, not device 0 on every rank) and the process group joined (nccl on GPUs, else gloo)."""
    import torch  # here, not at the top: `eval --help` imports this module

    rank, world = rank_and_world()
    if world > 1 and not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=collective_timeout())
    return rank, world


def on_every_rank(share: Callable[[], T], what: str) -> T:
    """Run this rank's share of a job, then agree with every rank on how the shares went: a rank
    whose share failed raises its own error, the others RankFailed naming it. So no rank goes on
    to a later collective that a failed rank will never join."""
    world = rank_and_world()[1]
    if world == 1:
        return share()
    import torch

    if not torch.distributed.is_initialized():
        return share()
    try:
        result, failure = share(), None
    except Exception as error:  # noqa: BLE001 - every rank must hear of it before anyone raises
        result, failure = None, error
    reports: list = [None] * world
    torch.distributed.all_gather_object(reports, None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    failed = [(other, report) for other, report in enumerate(reports) if report is not None]
    if failed:
        other, report = failed[0]
        raise RankFailed(f"{what} failed on rank {other} of {world}: {report}")
    return result
