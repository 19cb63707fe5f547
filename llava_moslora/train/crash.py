"""An error nobody foresaw (a bug, an out-of-memory, a failed collective) ends the run at once.

Left to Python, a rank that raised in the middle of training never exits: at interpreter exit
multiprocessing joins the DataLoader workers, which ignore SIGTERM (train/interrupt.py, so that a
scheduler's signal cannot kill the step being saved), and the join waits forever while the other
ranks wait in their collective. Here the failing rank says what happened once, with its rank and
step (an out-of-memory also with the batch and what to change), kills its own workers and exits
1 without the interpreter's teardown; the launcher then ends the other ranks, whose collectives
fail for want of this one and who say only that.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from dataclasses import dataclass, field
from typing import Optional

FAILED = 1  # the exit code of a rank that crashed (train/launch.py: said, no torchrun report)
# What a collective says on the ranks that outlive a crashed one (gloo, NCCL, torch.distributed).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
             "Socket Timeout", "DistNetworkError", "DistBackendError", "ProcessGroupGloo", "ProcessGroupNCCL")


@dataclass
class InFlight:
    """The step being trained and this rank's batch in it (set by the trainer before each forward)."""

    step: Optional[int] = None
    sample_ids: list = field(default_factory=list)
    mask: Optional[object] = None  # the batch's attention mask: kept, read only when a crash is said
    width: int = 0  # its row length, for a batch without a mask

    @property
    def lengths(self) -> list[int]:
        """Tokens per row (counted only when a crash is said: no device sync per micro-batch)."""
        return self.mask.sum(-1).tolist() if self.mask is not None else [self.width]


IN_FLIGHT = InFlight()


def rank() -> str:
    return os.environ.get("RANK", "0")


def is_consequence(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank is gone."""
    text = f"{type(error).__name__} {error}"
    return any(marker in text for marker in PEER_GONE)


def out_of_memory_advice(per_device_batch: Optional[int]) -> str:
    batch = f"PER_DEVICE_BATCH={per_device_batch // 2} (GLOBAL_BATCH is kept by accumulation)" \
        if per_device_batch and per_device_batch > 1 else "a smaller MAX_LENGTH"
    return (f"lower the batch: {batch}; or keep --activation_checkpointing True, use ZERO=3 (or 3_offload), "
            "or PACKING=1 with a shorter MAX_LENGTH (the packed row length)")


def describe(error: BaseException, per_device_batch: Optional[int] = None) -> str:
    """One message: where it happened, what it was, and for an out-of-memory what to change."""
    import torch

    where = f"rank {rank()}" + (f", step {IN_FLIGHT.step}" if IN_FLIGHT.step is not None else " (before training)")
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, torch.OutOfMemoryError):
        ids = ", ".join(str(i) for i in IN_FLIGHT.sample_ids[:16]) + (" ..." if len(IN_FLIGHT.sample_ids) > 16 else "")
        return (f"llava-moslora train: out of memory on {where}: samples [{ids}] of {len(IN_FLIGHT.lengths)} rows, "
                f"tokens per row {IN_FLIGHT.lengths}, per-device batch {per_device_batch}. To fit, "
                f"{out_of_memory_advice(per_device_batch)}. ({first[:200]})")
    return f"llava-moslora train: {where} failed: {type(error).__name__}: {first[:300]}"


def end_workers() -> None:
    """Kill this rank's own children (its DataLoader workers ignore SIGTERM, see above). torch's
    SIGCHLD handler would raise again for each killed worker: the default handler first."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass


def crashed(error: BaseException, per_device_batch: Optional[int] = None) -> int:
    """Say `error` (the full traceback too, where it started here), end the workers; the exit code."""
    if is_consequence(error):
        print(f"llava-moslora train: rank {rank()} stopped at step {IN_FLIGHT.step}: another rank failed "
              f"({type(error).__name__})", file=sys.stderr, flush=True)
    else:
        traceback.print_exception(error, file=sys.stderr)
        print(describe(error, per_device_batch), file=sys.stderr, flush=True)
    end_workers()
    return FAILED
