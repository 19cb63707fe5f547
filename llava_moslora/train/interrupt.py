"""Stopping on SIGTERM / SIGINT / SIGUSR1 with a resumable checkpoint instead of losing the run.

Schedulers (SLURM, Kubernetes, torchrun's own shutdown) send SIGTERM and wait a grace period
before SIGKILL; Ctrl-C sends SIGINT; SLURM's `--signal=USR1@T` warns T seconds before the time
limit. All three mean the same here: save and stop (the launcher, train/launch.py, ends with
128 + the signal). The first signal only raises a flag; at the end of the
current optimizer step the ranks agree (any rank signalled = stop), the Trainer saves
checkpoint-N as it does every --save_steps, and training returns. A second signal gets the
default behaviour (terminate now), unless it comes within DUPLICATE_WINDOW_S of the first: a
cluster signals every process of the job (SLURM's scancel, Kubernetes, `timeout`) and torchrun then
forwards the same signal again, so each rank sees one request twice.

Data-loader workers ignore these signals (`ShieldedWorkerInit`): torch's own worker handler exits on
a SIGTERM from anyone but its parent, so a signal to the process group killed the workers, and with
them the step the ranks were about to save at. The main process shuts its workers down.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from typing import Optional

import torch
from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
DUPLICATE_WINDOW_S = 10.0


class ShieldedWorkerInit:
    """A DataLoader worker_init_fn: ignore the stop signals in the worker, then run `inner`.
    A class, not a closure, so it pickles for spawned workers too."""

    def __init__(self, inner=None) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.received: Optional[int] = None  # the signal that arrived, on this rank
        self.stopped_by: Optional[int] = None  # the signal the run stopped for (any rank's)
        self._previous: dict = {}
        self._pid = os.getpid()
        self._received_at = 0.0

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked data-loader worker: the main process decides
            return
        if self.received is not None and time.monotonic() - self._received_at < DUPLICATE_WINDOW_S:
            return  # the same request again (group delivery, then torchrun forwarding it)
        if self.received is not None:  # a later second signal: the user means it
            self._restore()
            signal.raise_signal(signum)
            return
        self.received, self._received_at = signum, time.monotonic()
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
        return agreed_max(self.received or 0, args)


def agreed_max(local: int, args) -> int:
    """The largest of every rank's `local` (all ranks call it at the same step)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    flag = torch.tensor([local], dtype=torch.int32, device=args.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


class SaveEveryMinutes(TrainerCallback):
    """A checkpoint at least every `minutes` (--save_minutes), besides --save_steps, so a crash, an
    out-of-memory or a lost node loses at most that much. Rank 0's clock decides and every rank
    hears it in the step's reduce, so all save at the same step (ZeRO's save is collective)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self._last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        due = time.monotonic() - self._last >= self.seconds
        rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
        if agreed_max(int(due and rank0), args):
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self._last = time.monotonic()  # whatever made this save (steps, a signal, time)
