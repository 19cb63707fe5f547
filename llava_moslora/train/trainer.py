"""LlavaTrainer: transformers' Trainer plus what LLaVA-style adapter training needs.

- learning rates of their own for the projector and the MoE-LoRA routers;
- MoE-LoRA load-balancing loss (when enabled) and expert load in the logs;
- every checkpoint-N and the final output hold a stage checkpoint (recipe, tokenizer/processor,
  trained tensors), gathered from ZeRO-3 shards when needed; resuming without DeepSpeed reads it.
  DeepSpeed's own checkpoint leaves the frozen base out too (transformers asks for that only for
  PEFT models), and resuming from it tolerates their absence, strict for everything trained;
- checkpoints are written atomically: into .staging/checkpoint-N, renamed to checkpoint-N once
  every rank has finished, so a kill during saving leaves only complete checkpoint-N folders;
- samples the dataset skipped (--skip_bad_samples) are counted; tokens and the data order are
  recorded (train/metrics.py), the record kept in every checkpoint-N;
- the modality-length grouped sampler for --group_by_modality_length, told each epoch by a
  callback (SamplerEpoch);
- the LM head only at positions that predict a label (--logits_at_labels, on by default).

Public hooks are used where transformers has them (callbacks, create_optimizer, compute_loss,
log, save_model, get_train_dataloader, train). Five private methods are still overridden, for
want of a public way to do the same: _get_train_sampler (our sampler), _get_output_dir and
_save_checkpoint (atomic checkpoints), _save_optimizer_and_scheduler (DeepSpeed's checkpoint
without the frozen base), _load_from_checkpoint (our checkpoint format).
PRIVATE_OVERRIDES records their signatures; pyproject.toml pins transformers to the minor
version they were checked on, and tests/train/test_trainer_hooks.py fails if one changes.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from ..adapters import MoELoraLinear, moe_aux_loss
from ..data import IGNORE_INDEX, ModalityLengthGroupedSampler
from ..model import TRAINABLE_FILE, LlavaBundle, save_checkpoint, trained_tensor_names
from ..model.checkpoint import load_trained_tensors, parameters_by_name
from ..model.partitioned import whole
from .crash import IN_FLIGHT
from .interrupt import ShieldedWorkerInit
from .nonfinite import NonFiniteGuard
from .metrics import RunRecord

STAGING_DIR = ".staging"
FULL_DISK_BYTES = 1 << 20  # free space under this after a failed save: the disk filled up


class CheckpointSaveError(RuntimeError):
    """Saving a checkpoint failed (a full disk, usually): said by every rank that met it."""


def save_failure(error: BaseException, folder: Path, step: int) -> CheckpointSaveError:
    """What to say when saving checkpoint-`step` into `folder` failed. Torch and DeepSpeed report a
    full disk in their own words ("unexpected pos", "iostream error"), so the free space decides."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    full = getattr(error, "errno", None) == 28 or (free is not None and free < FULL_DISK_BYTES)
    cause = (f"the disk is full ({free or 0} bytes free on {folder})" if full
             else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    previous = sorted(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1])
                      if p.name.rsplit("-", 1)[1].isdigit() else -1)
    kept = f"{previous[-1]} is intact: free space, then continue with --resume_from_checkpoint auto" if previous \
        else "no earlier checkpoint exists: free space and start again"
    return CheckpointSaveError(f"saving {PREFIX_CHECKPOINT_DIR}-{step} failed: {cause}. Training stopped; the "
                               f"partial checkpoint was removed; {kept}")


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, positions, their next-token labels as one (1, N) row) of every position whose next
    token carries a label; a batch without any gives one position, its label ignored."""
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    rows, positions = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)
    if rows.numel() == 0:
        rows = torch.zeros(1, dtype=torch.long, device=labels.device)
        positions = torch.full((1,), labels.shape[1] - 1, dtype=torch.long, device=labels.device)
    return rows, positions, shifted[rows, positions][None]


class HeadAtLabels:
    """Makes a model's LM head compute logits only where labels are, while `at(labels)` is active:
    a forward pre-hook hands the head the hidden states of those (row, position) pairs alone, and
    transformers' causal-LM loss gets their labels as `shift_labels`. The positions left out carry
    no label and add nothing to the loss: loss and gradients are the full head's (up to summation
    order), the logits a fraction (576 image tokens and the prompts have none)."""

    def __init__(self, head: torch.nn.Module) -> None:
        self.positions: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        head.register_forward_pre_hook(self._gather)

    def _gather(self, module, args):
        if self.positions is None:
            return None
        rows, positions = self.positions
        return (args[0][rows, positions][None], *args[1:])

    @contextlib.contextmanager
    def at(self, labels: torch.Tensor):
        rows, positions, shifted = labelled_positions(labels)
        self.positions = (rows, positions)
        try:
            yield {"shift_labels": shifted}
        finally:
            self.positions = None


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_tensors(model: torch.nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Full copies (on CPU) of the parameters with these canonical names, gathering ZeRO-3
    partitions. Every rank must call it (the gather is collective)."""
    parameters = parameters_by_name(model)
    gathered = {}
    for name in names:
        with whole([parameters[name]]):
            gathered[name] = parameters[name].detach().to("cpu", copy=True)
    return gathered


# The Trainer's private methods LlavaTrainer overrides, with the parameters it relies on.
PRIVATE_OVERRIDES = {
    "_get_train_sampler": ("self", "train_dataset"),
    "_get_output_dir": ("self", "trial"),
    "_save_checkpoint": ("self", "model", "trial"),
    "_save_optimizer_and_scheduler": ("self", "output_dir"),
    "_load_from_checkpoint": ("self", "resume_from_checkpoint", "model"),
}


@contextlib.contextmanager
def frozen_parameters_may_be_missing(model: torch.nn.Module):
    """While open, a strict load_state_dict on `model` accepts a state dict without the frozen
    parameters (DeepSpeed's checkpoints here leave them out: they come from the base model) and
    still fails on a missing trained one or an unexpected key."""
    frozen = {name for name, parameter in model.named_parameters(remove_duplicate=False)
              if not parameter.requires_grad}

    def forgive_frozen(module, incompatible_keys) -> None:
        # torch checks strictness after the post hooks, on the lists they leave
        incompatible_keys.missing_keys[:] = [k for k in incompatible_keys.missing_keys if k not in frozen]

    handle = model.register_load_state_dict_post_hook(forgive_frozen)
    try:
        yield
    finally:
        handle.remove()


class SamplerEpoch(TrainerCallback):
    """Tells the grouped sampler the epoch at each epoch's start, resumed epochs included: the
    Trainer reaches a sampler's set_epoch through accelerate's wrappers, which the batch-skipping
    loader of a resumed epoch hides, so a run resumed in epoch 2 or later would redraw epoch 1's
    order. on_epoch_begin runs just before the epoch's data loader is iterated."""

    def __init__(self, trainer: "LlavaTrainer") -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.grouped_sampler is not None:
            # state.epoch is the float progress: 1.4 while resuming epoch 1, exactly k at epoch k's start
            self.trainer.grouped_sampler.set_epoch(math.floor(state.epoch + 1e-9))


class RatesKept(TrainerCallback):
    """When training begins, after DeepSpeed may have replaced the optimizer (with CPU offload,
    accelerate hands DeepSpeed a DeepSpeedCPUAdam for torch's AdamW): each parameter group still
    steps at the rate create_optimizer gave it (projector, routers), or the run stops; rank 0 says
    which optimizer steps at which rates."""

    def __init__(self, trainer: "LlavaTrainer") -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = optimizer
        while hasattr(inner, "optimizer"):  # accelerate's wrapper, DeepSpeed's ZeRO optimizer
            inner = inner.optimizer
        # a scheduler keeps each group's rate in initial_lr (lr itself starts at 0 under warmup)
        kept = [group.get("initial_lr", group["lr"]) for group in inner.param_groups]
        meant = [lr for _, lr in self.trainer.group_rates]
        if kept != meant:
            raise RuntimeError(f"{type(inner).__name__} has the learning rates {kept}, not the {meant} given to "
                               f"{', '.join(role for role, _ in self.trainer.group_rates)}")
        if args.process_index == 0:
            rates = ", ".join(dict.fromkeys(f"{role} {lr:g}" for role, lr in self.trainer.group_rates))
            tqdm.write(f"[llava-moslora] optimizer {type(inner).__name__}; learning rates: {rates}")  # below the bar


class LlavaTrainer(Trainer):
    def __init__(self, *args, bundle: LlavaBundle, **kwargs) -> None:
        self.grouped_sampler: Optional[ModalityLengthGroupedSampler] = None
        super().__init__(*args, **kwargs)
        self.add_callback(SamplerEpoch(self))
        self.group_rates: list[tuple[str, float]] = []  # (role, rate) per optimizer group, create_optimizer's
        self.add_callback(RatesKept(self))
        self.head_at_labels = HeadAtLabels(bundle.model.lm_head) if self.args.logits_at_labels else None
        self.bundle = bundle
        self._moe_layers = [m for m in bundle.model.modules() if isinstance(m, MoELoraLinear)]
        self._expert_load_sum: Optional[torch.Tensor] = None
        self._expert_load_steps = 0
        # Text-only batches: see compute_loss. The idle vision pass runs just before the
        # language model, where image batches run the vision tower.
        self._idle_pending = False
        self._idle_loss: Optional[torch.Tensor] = None
        bundle.model.model.language_model.register_forward_pre_hook(self._before_language_model)
        self.skipped_ids: list = []  # samples this rank's data loader replaced (--skip_bad_samples)
        self.label_counts = [0, 0, 0]  # this rank's trained samples: seen, fully masked, truncated
        self.record = RunRecord()
        self._staging: Optional[Path] = None
        self.nonfinite = NonFiniteGuard(self.args.max_nonfinite_steps)
        self.nonfinite.attach([p for p in bundle.model.parameters() if p.requires_grad])
        self.add_callback(self.nonfinite)

    # --- optimisation -------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple, list] = defaultdict(list)
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            role, lr = "the rest", self.args.learning_rate
            if "multi_modal_projector" in name and self.args.mm_projector_lr is not None:
                role, lr = "mm_projector", self.args.mm_projector_lr
            elif ".lora_router." in name and self.args.router_lr is not None:
                role, lr = "routers", self.args.router_lr
            groups[(role, lr, self.args.weight_decay if name in decay else 0.0)].append(parameter)
        param_groups = [{"params": params, "weight_decay": wd, "lr": lr} for (_, lr, wd), params in groups.items()]
        self.group_rates = [(role, lr) for role, lr, _ in groups]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # A text-only batch must still run the vision tower and projector, at the point of the
        # forward where image batches run them (after the token embeddings, before the LM):
        # otherwise this rank's gradients and ZeRO-3 parameter gathers are missing or out of order
        # relative to other ranks', and DeepSpeed's collectives fall out of step and crash.
        self.skipped_ids += inputs.pop("skipped_ids", [])
        sample_ids = inputs.pop("sample_ids", None)
        counts = inputs.pop("label_counts", None)
        tokens = inputs.pop("token_counts", None)
        if sample_ids is not None and model.training:
            self.record.update(sample_ids, *tokens)
        if model.training:  # what a crash report names (train/crash.py)
            IN_FLIGHT.step, IN_FLIGHT.sample_ids = self.state.global_step + 1, list(sample_ids or [])
            IN_FLIGHT.mask, IN_FLIGHT.width = inputs.get("attention_mask"), inputs["input_ids"].shape[-1]
        if counts is not None and model.training:
            self.label_counts = [total + count for total, count in zip(self.label_counts, counts)]
        self._idle_pending = "pixel_values" not in inputs and model.training
        if self.head_at_labels is not None and model.training and inputs.get("labels") is not None:
            with self.head_at_labels.at(inputs["labels"]) as labelled:
                result = super().compute_loss(model, {**inputs, **labelled}, return_outputs=return_outputs,
                                              num_items_in_batch=num_items_in_batch)
        else:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        if model.training and self.nonfinite is not None:
            loss = result[0] if return_outputs else result
            loss = self.nonfinite.checked(loss, sample_ids)
            result = (loss, result[1]) if return_outputs else loss
        extra, self._idle_loss, self._idle_pending = self._idle_loss, None, False
        aux = moe_aux_loss(self.bundle.model) if self._moe_layers else None
        if aux is not None and model.training and self._loss_counts_accumulation(num_items_in_batch):
            aux = aux / self.current_gradient_accumulation_steps  # as the main loss weighs each micro-batch
        if aux is not None:
            extra = aux if extra is None else extra + aux
        if extra is not None:
            result = (result[0] + extra, result[1]) if return_outputs else result + extra
        if self._moe_layers and model.training:
            # Summed on the device; moved to the CPU only when logged, so no sync per step.
            load = torch.stack([m.last_expert_load for m in self._moe_layers if m.last_expert_load is not None]).mean(0)
            self._expert_load_sum = load if self._expert_load_sum is None else self._expert_load_sum + load
            self._expert_load_steps += 1
        return result

    def _loss_counts_accumulation(self, num_items_in_batch) -> bool:
        """Whether the main loss already weighs this micro-batch within the step (normalized by the
        step's num_items_in_batch), so that Trainer.training_step does not divide it by the
        accumulation steps: the same test training_step makes (transformers 5.23)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return scaled
        return (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None

    def _before_language_model(self, module, args) -> None:
        if self._idle_pending:
            self._idle_pending = False
            self._idle_loss = self._idle_vision_loss()

    def _idle_vision_loss(self) -> torch.Tensor:
        llava = self.bundle.model
        size = llava.config.vision_config.image_size
        parameter = next(llava.model.multi_modal_projector.parameters())
        blank = torch.zeros(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
        features = llava.model.get_image_features(pixel_values=blank).pooler_output
        return 0.0 * sum(f.float().sum() for f in features)

    def log(self, logs: dict, start_time=None) -> None:
        if self._expert_load_steps:
            load = (self._expert_load_sum / self._expert_load_steps).cpu()  # share of routing slots per expert
            logs["expert_load_max"] = round(float(load.max()), 4)
            logs["expert_load_min"] = round(float(load.min()), 4)
            self._expert_load_sum, self._expert_load_steps = None, 0
        super().log(logs, start_time)

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        torch_loader = getattr(loader, "base_dataloader", loader)  # accelerate wraps the DataLoader
        torch_loader.worker_init_fn = ShieldedWorkerInit(torch_loader.worker_init_fn)  # see train/interrupt.py
        return loader

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.group_by_modality_length:
            self.grouped_sampler = ModalityLengthGroupedSampler(
                dataset.modality_lengths, batch_size=self.args.per_device_train_batch_size,
                world_size=self.args.world_size * self.args.gradient_accumulation_steps, seed=self.args.seed)
            return self.grouped_sampler
        return super()._get_train_sampler(train_dataset)

    # --- checkpoints --------------------------------------------------------------------------
    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Write a stage checkpoint (never the frozen base weights)."""
        output_dir = output_dir or self.args.output_dir
        names = trained_tensor_names(self.bundle.model, self.bundle.recipe)
        tensors = gather_tensors(self.bundle.model, names)
        if self.args.should_save:
            save_checkpoint(self.bundle, output_dir, state_dict=tensors)

    def train(self, *args, **kwargs):
        # The Trainer resumes a DeepSpeed run with a strict load (non-strict only for PEFT models)
        with frozen_parameters_may_be_missing(self.model):
            return super().train(*args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """DeepSpeed's checkpoint without the frozen weights: at 7B they are ~13.5 GB per
        checkpoint-N that never change (and a signal's save has 300 s)."""
        if not self.is_deepspeed_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        from accelerate.utils import DeepSpeedSchedulerWrapper

        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        # as upstream: the engine saves a scheduler of the DeepSpeed config, the Trainer its own
        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written into .staging/ and renamed into place when complete."""
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / STAGING_DIR
        if self.args.should_save:  # one process per file system (each node's with save_on_each_node)
            shutil.rmtree(staging / name, ignore_errors=True)  # left by a run killed while saving
        barrier()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
            (staging / name).mkdir(parents=True, exist_ok=True)
            self.record.save(staging / name, self.args.process_index)
        except Exception as error:  # this rank could not write its part: clean up, say why, stop
            failure = save_failure(error, run_dir, self.state.global_step)
            shutil.rmtree(staging / name, ignore_errors=True)  # each rank: its own files at least
            raise failure from error
        finally:
            self._staging = None
        barrier()  # every rank's shards are on disk
        if self.args.should_save and (staging / name).exists():
            if (run_dir / name).exists():
                shutil.rmtree(run_dir / name)
            os.replace(staging / name, run_dir / name)
        if self.args.should_save:
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        barrier()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint) / TRAINABLE_FILE
        if not path.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_trained_tensors(model or self.model, path)
