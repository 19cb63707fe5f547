"""Stopping on SIGTERM / SIGINT with a resumable checkpoint instead of losing the run.

Schedulers (SLURM, Kubernetes, torchrun's own shutdown) send SIGTERM and wait a grace period
before SIGKILL; Ctrl-C sends SIGINT. The first signal only raises a flag; at the end of the
current optimizer step the ranks agree (any rank signalled = stop), the Trainer saves
checkpoint-N as it does every --save_steps, and training returns. A second signal gets the
default behaviour (terminate now).
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Optional

import torch
from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.received: Optional[int] = None  # the signal that arrived, on this rank
        self.stopped_by: Optional[int] = None  # the signal the run stopped for (any rank's)
        self._previous: dict = {}
        self._pid = os.getpid()

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker: the main process decides
            return
        if self.received is not None:  # second signal: the user means it
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        print(f"[llava-moslora] {signal.Signals(signum).name} received: saving a checkpoint at the end of this "
              "step, then stopping (send it again to stop at once)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        signum = self._agreed(args)
        if signum:
            self.stopped_by = signum
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _agreed(self, args) -> int:
        """The signal number if any rank received one (a max-reduce every step: a few bytes)."""
        import torch.distributed as dist

        local = self.received or 0
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        flag = torch.tensor([local], dtype=torch.int32, device=args.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
