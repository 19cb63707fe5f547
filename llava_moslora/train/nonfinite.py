"""A loss that is not finite (NaN, inf) is left out of the step, counted, and after
--max_nonfinite_steps steps in a row stops the run, naming the steps and their samples.

A non-finite micro-batch loss still runs its backward, so that every rank produces its gradients
in the same order (ZeRO's bucketed reduce pairs them by position), but a hook on each trainable
parameter zeroes the gradient before it is accumulated or reduced: its NaN reaches no weight. DeepSpeed's fp16 loss scaling skips
overflowing steps by itself; bf16 and fp32 runs have nothing else that would. Every rank hears
of a bad micro-batch anywhere in the step's reduce, so all count, stop or go on together.
"""
from __future__ import annotations

import torch
from transformers import TrainerCallback

from .interrupt import agreed_max


class NonFiniteLoss(RuntimeError):
    """The loss was not finite for too many steps in a row; said once, exit 2 (the last checkpoint stays)."""


class NonFiniteGuard(TrainerCallback):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bad_in_step = False
        self.bad_ids: list = []  # this rank's samples in the current run of bad steps
        self.run: list[int] = []  # the current run of bad steps
        self.skipped: list[int] = []  # every step with a left-out micro-batch
        self.dropping = False  # the micro-batch being backpropagated is left out

    def attach(self, trainable: list[torch.nn.Parameter]) -> None:
        for parameter in trainable:
            parameter.register_hook(self._gradient)

    def _gradient(self, gradient: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(gradient) if self.dropping else gradient

    def checked(self, loss: torch.Tensor, sample_ids) -> torch.Tensor:
        """`loss`; when it is not finite, 0 (for the logged loss), its gradients dropped by the hooks."""
        self.dropping = not bool(torch.isfinite(loss.detach()).all())
        if not self.dropping:
            return loss
        self.bad_in_step = True
        self.bad_ids += list(sample_ids or [])
        return torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0)

    def on_step_end(self, args, state, control, **kwargs):
        bad = agreed_max(int(self.bad_in_step), args)
        self.bad_in_step = False
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
