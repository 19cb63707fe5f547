"""A loss that is not finite (NaN, inf) is left out of the step, counted, and after
--max_nonfinite_steps steps in a row stops the run, naming the steps and their samples.

A non-finite micro-batch loss still runs its backward, so that every rank produces its gradients
in the same order (ZeRO's bucketed reduce pairs them by position), but a hook on each trainable
parameter zeroes the gradient before it is accumulated or reduced: its NaN reaches no weight. DeepSpeed's fp16 loss scaling skips
overflowing steps by itself; bf16 and fp32 runs have nothing else that would. Every rank hears
of a bad micro-batch anywhere in the step's reduce, so all count, stop or go on together.
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import TrainerCallback

from .interrupt import agreed_max


class NonFiniteLoss(RuntimeError):
    """The loss was not finite for too many steps in a row; said once, exit 2 (the last checkpoint stays)."""


class NonFiniteGuard(TrainerCallback):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: list = []  # this step's micro-batches: (non-finite flag on the device, sample ids)
        self.bad_ids: list = []  # this rank's samples in the current run of bad steps
        self.run: list[int] = []  # the current run of bad steps
        self.skipped: list[int] = []  # every step with a left-out micro-batch
        self.dropping: Optional[torch.Tensor] = None  # the micro-batch being backpropagated is left out

    def attach(self, trainable: list[torch.nn.Parameter]) -> None:
        for parameter in trainable:
            parameter.register_hook(self._gradient)

    def _gradient(self, gradient: torch.Tensor) -> torch.Tensor:
        return gradient if self.dropping is None else gradient.masked_fill(self.dropping, 0.0)

    def checked(self, loss: torch.Tensor, sample_ids) -> torch.Tensor:
        """`loss`, or 0 (for the logged loss) where it is not finite, its gradients dropped by the
        hooks. Decided on the device: no synchronisation per micro-batch, only at the step's end."""
        self.dropping = ~torch.isfinite(loss.detach()).all()
        self.pending.append((self.dropping, list(sample_ids or [])))
        return torch.where(self.dropping, torch.zeros_like(loss), loss)

    def on_step_end(self, args, state, control, **kwargs):
        local = [ids for flag, ids in self.pending if bool(flag)]
        self.pending = []
        self.bad_ids += [i for ids in local for i in ids]
        bad = agreed_max(int(bool(local)), args)
        if not bad:
            self.run, self.bad_ids = [], []
            return control
        self.run.append(state.global_step)
        self.skipped.append(state.global_step)
        if len(self.run) >= self.limit > 0:
            from .screen import gather_lists

            ids = list(dict.fromkeys(gather_lists(self.bad_ids)))
            raise NonFiniteLoss(
                f"the loss was not finite (NaN or inf) in {len(self.run)} steps in a row (steps "
                f"{', '.join(map(str, self.run))}; samples {ids[:20]}{' ...' if len(ids) > 20 else ''}); stopped "
                "without saving, the last checkpoint stays. Lower the learning rate or check those samples, "
                "then continue with --resume_from_checkpoint auto")
        return control
