"""--dry_run: what a training run would be, worked out before anything heavy happens.

The model is built on the meta device from the configs (no weight file is read) and tuned as
the run would tune it; printed are its trainable-parameter tables (per component, and by kind:
adapter factors, mixers, routers, whole tensors), the batch arithmetic, the learning-rate schedule, and an
estimate of per-GPU memory under ZeRO-2 and ZeRO-3. The estimate counts, per process:
- weights: every parameter at the run's width (2 bytes in bf16/fp16, 4 in fp32), the language
  model's quantized linear weights (QLoRA, --bits 4/8) at bits/8 bytes plus their block scales
  (4-bit: a 32-bit absmax per 64 weights, 8-bit once double-quantized; 8-bit: a scale per row); ZeRO-3
  partitions them over the world and keeps up to stage3_max_live_parameters of them gathered
  (DeepSpeed's default and ours: 1e9, so a model under 1e9 parameters stays whole);
- gradients of the trainable tensors, partitioned (ZeRO-2 and -3), plus two reduce buckets
  (overlap_comm; "auto" is hidden_size^2 elements, as the Trainer fills it in);
- optimizer states of the trainable tensors: AdamW's two moments and DeepSpeed's fp32 copy,
  12 bytes per parameter, partitioned;
- activations, a rough term at full --model_max_length: with activation checkpointing each
  layer keeps its input and one layer is recomputed at a time; the logits are held in fp32 for
  the loss (with --logits_at_labels, at most at the positions that are not image tokens). Real batches are shorter, so this is an upper bound; attention scores are left out
  (SDPA / flash attention do not store them).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

GIB = 1024 ** 3
OPTIMIZER_BYTES = 12  # fp32 copy + AdamW's exp_avg + exp_avg_sq


@dataclass
class Batches:
    world: int
    per_device: int
    accumulation: int
    records: int
    epochs: float
    max_steps: int

    @property
    def global_batch(self) -> int:
        return self.world * self.per_device * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        """As the Trainer counts them: each rank's batches, then optimizer steps (a partial
        accumulation at the end of an epoch still steps)."""
        batches_per_rank = math.ceil(self.records / (self.per_device * self.world))
        return max(math.ceil(batches_per_rank / self.accumulation), 1)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps > 0 else math.ceil(self.steps_per_epoch * self.epochs)

    def render(self) -> str:
        length = f"--max_steps {self.max_steps}" if self.max_steps > 0 else f"{self.epochs:g} epoch(s)"
        return (f"batch: {self.world} process(es) x per-device batch {self.per_device} x accumulation "
                f"{self.accumulation} = global batch {self.global_batch}\n"
                f"steps: {self.records} records -> {self.steps_per_epoch} optimizer steps per epoch; "
                f"{length} -> {self.total_steps} steps")


def schedule_text(training_args, total_steps: int) -> str:
    """The learning-rate schedule as the Trainer will build it: kind, warmup steps (a
    --warmup_steps below 1 is a ratio of the steps, rounded up), extra arguments, peak rate."""
    warmup = training_args.get_warmup_steps(total_steps)
    kwargs = training_args.lr_scheduler_kwargs or {}
    extra = "; " + ", ".join(f"{key} {value}" for key, value in sorted(kwargs.items())) if kwargs else ""
    kind = getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)
    optimizer = getattr(training_args.optim, "value", training_args.optim)
    return (f"schedule: {kind}, {warmup} warmup step(s) of {total_steps}{extra}; peak learning rate "
            f"{training_args.learning_rate:g}, {optimizer} "
            f"(weight decay {training_args.weight_decay:g}, gradient clip {training_args.max_grad_norm:g})")


def activation_bytes(text_config, per_device: int, max_length: int, width: int, checkpointing: bool,
                     image_tokens: int = 0) -> int:
    """The rough activation term for the language model (see the module docstring); logits at
    every position but `image_tokens` per sequence (--logits_at_labels: those carry no label)."""
    tokens = per_device * max_length
    hidden, layers = text_config.hidden_size, text_config.num_hidden_layers
    intermediate = getattr(text_config, "intermediate_size", 4 * hidden)
    one_layer = tokens * (10 * hidden + 3 * intermediate) * width  # q/k/v/o, norms, MLP in and out
    kept = layers * tokens * hidden * width + one_layer if checkpointing else layers * one_layer
    logits = 2 * per_device * max(max_length - image_tokens, 1) * text_config.vocab_size * 4  # fp32, and its gradient
    return kept + logits


def zero_settings(deepspeed, hidden: int) -> tuple[int, int]:
    """(reduce_bucket_size, stage3_max_live_parameters) of the DeepSpeed config, in elements
    ("auto" bucket: hidden_size^2, as the Trainer fills it in; DeepSpeed's defaults otherwise)."""
    config = json.loads(Path(deepspeed).read_text()) if isinstance(deepspeed, str) else (deepspeed or {})
    zero = config.get("zero_optimization", {})
    bucket = zero.get("reduce_bucket_size", "auto")
    return (hidden * hidden if bucket == "auto" else int(float(bucket)),
            int(float(zero.get("stage3_max_live_parameters", 1e9))))


def quantized_weights(model, quantization: Optional[dict]) -> int:
    """Parameters that QLoRA stores quantized: the language model's linear weights (not lm_head)."""
    if not quantization:
        return 0
    from torch import nn

    return sum(m.weight.numel() for m in model.model.language_model.modules() if isinstance(m, nn.Linear))


def quantized_bytes_per_weight(quantization: Optional[dict]) -> float:
    if not quantization:
        return 0.0
    if quantization["bits"] == 8:
        return 1.0
    scales = (8 / 256 + 32 / (64 * 256)) if quantization.get("double_quant") else 32 / 64  # bits per weight
    return (4 + scales) / 8


def estimate(trainable: int, frozen: int, world: int, width: int, activations: int, bucket_elements: int,
             max_live: int, quantized: int = 0, quantized_width: float = 0.0) -> dict:
    """Bytes per process for ZeRO-2 and ZeRO-3, by kind (`quantized` of the frozen parameters
    held at `quantized_width` bytes each)."""
    total = trainable + frozen
    weights = (total - quantized) * width + quantized * quantized_width
    bucket = 2 * min(bucket_elements, trainable) * width
    common = {"gradients": trainable * width / world + bucket,
              "optimizer states": trainable * OPTIMIZER_BYTES / world, "activations (rough)": activations}
    return {2: {"weights": weights, **common},
            3: {"weights": weights / world + min(total, max_live) * width, **common}}


def checkpoint_bytes(trainable: int, width: int, stage: int) -> int:
    """Bytes a checkpoint-N takes on disk: the trained tensors in the stage checkpoint and (below
    ZeRO-3, which keeps placeholders) in DeepSpeed's model states, and their optimizer states (fp32
    master copy and the two moments, over all ranks' shards). The frozen weights are never saved."""
    return trainable * ((2 if stage < 3 else 1) * width + OPTIMIZER_BYTES)


def render_estimate(estimates: dict, width: int) -> str:
    totals = {stage: sum(parts.values()) for stage, parts in estimates.items()}
    unit, scale = ("GiB", GIB) if max(totals.values()) >= GIB else ("MiB", 1024 ** 2)
    title = f"memory per GPU, estimated ({unit}; weights at {width} bytes)"
    lines = [f"{title:<52}" + "".join(f"{'ZeRO-' + str(stage):>10}" for stage in estimates)]
    for kind, value in [*((kind, {st: estimates[st][kind] for st in estimates}) for kind in estimates[2]),
                        ("total", totals)]:
        lines.append(f"  {kind:<50}" + "".join(f"{value[stage] / scale:>10.2f}" for stage in estimates))
    return "\n".join(lines)


def count_records(data_path: str) -> int:
    """Records in the data file(s) (JSON, JSONL, parquet, Arrow, a `datasets` folder or id), unparsed."""
    from ..data.records import data_paths
    from ..data.tables import is_table_source, open_table

    total = 0
    for one in data_paths(data_path):
        if is_table_source(one):
            total += len(open_table(str(one)))  # memory-mapped: its length is in its metadata
            continue
        text = Path(one).read_text(encoding="utf-8")  # read once: a JSON list is counted by parsing it
        total += len(json.loads(text)) if text.lstrip().startswith("[") else sum(1 for line in text.splitlines()
                                                                               if line.strip())
    return total


def count_samples(data: str, mixture: bool) -> int:
    """Samples an epoch holds: the records of --data_path, or what --data_mixture draws."""
    if not mixture:
        return count_records(data)
    from ..data.mixture import mixture_size, parse_mixture

    parts = parse_mixture(data)
    return mixture_size(parts, [count_records(part.path) for part in parts])


def dry_run(bundle, training_args, data_path: str, world: int, half: bool, mixture: bool = False) -> str:
    """The dry run's report for a tuned meta-device bundle."""
    from ..model import parameter_counts, trainable_kinds_table, trainable_table

    counts = parameter_counts(bundle.model)
    trainable = sum(t for t, _ in counts.values())
    frozen = sum(total for _, total in counts.values()) - trainable
    width = 2 if half else 4
    text_config = bundle.model.config.text_config
    batches = Batches(world, training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps,
                      count_samples(data_path, mixture), training_args.num_train_epochs, training_args.max_steps)
    activations = activation_bytes(text_config, batches.per_device,
                                   training_args.model_max_length, width, training_args.activation_checkpointing,
                                   bundle.recipe.num_image_tokens if training_args.logits_at_labels else 0)
    quantization = bundle.recipe.quantization
    estimates = estimate(trainable, frozen, world, width, activations,
                         *zero_settings(training_args.deepspeed, text_config.hidden_size),
                         quantized=quantized_weights(bundle.model, quantization),
                         quantized_width=quantized_bytes_per_weight(quantization))
    stage = training_args.zero_stage()
    if quantization:  # ZeRO-3 cannot take quantized weights (refused at start): ZeRO-2 or one GPU
        estimates = {2: estimates[2]}
    disk = checkpoint_bytes(trainable, width, stage)
    saved = (f"each checkpoint-N on disk, estimated: {disk / GIB:.2f} GiB (the frozen weights are not saved);"
             f" --save_total_limit keeps {training_args.save_total_limit or 'every'}")
    return "\n".join([trainable_table(bundle.model), trainable_kinds_table(bundle.model), batches.render(),
                      schedule_text(training_args, batches.total_steps), render_estimate(estimates, width), saved,
                      f"this run: ZeRO-{stage}" if stage else "this run: no DeepSpeed",
                      "dry run: nothing was trained; drop --dry_run to start."])
