"""`llava-moslora train` / `python -m llava_moslora.train`: one training stage, end to end.

Run it under `torchrun` or the `deepspeed` launcher (scripts/pretrain.sh, scripts/finetune.sh).
Without CUDA the same command trains on the CPU: it adds --use_cpu and the gloo backend and
selects DeepSpeed's CPU accelerator, so cluster scripts run unchanged on a laptop.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from .machine import CPU_FLAGS, GPU_ONLY_FLAGS, adapt_to_machine, join_process_group, precision_chosen, without_flags
from ..names import MISTAKE_EXIT_CODE
from .llava_flags import translate
from .preflight import check_launch, flag_is_on, flag_value

def parse(argv: list[str]):
    from transformers import HfArgumentParser

    from ..model import ModelArguments
    from ..model.tuning import ACTIVATION_CHECKPOINTING_KWARGS
    from .arguments import DataArguments, LlavaTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, LlavaTrainingArguments), prog="llava-moslora train",
                              description="Train one stage of LLaVA with adapters. Run under torchrun or the "
                                          "deepspeed launcher; scripts/pretrain.sh and scripts/finetune.sh do that.",
                               epilog="example: bash scripts/finetune.sh --dry_run (the scripts run this command under "
                                      "torchrun; their --help lists the variables)")
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    if training_args.activation_checkpointing and training_args.activation_checkpointing_kwargs is None:
        training_args.activation_checkpointing_kwargs = dict(ACTIVATION_CHECKPOINTING_KWARGS)
    refuse_impossible(model_args, training_args)
    if not data_args.data_path and not data_args.data_mixture:
        raise SystemExit("--data_path (or --data_mixture) is required")
    if data_args.data_path and data_args.data_mixture:
        raise SystemExit("give --data_path or --data_mixture, not both (DATA_MIXTURE in the scripts replaces DATA_PATH)")
    return model_args, data_args, training_args


def refuse_impossible(model_args, training_args) -> None:
    if training_args.riemannian and training_args.fp16:
        raise SystemExit("--riemannian with fp16: the preconditioner (B^T B + eps I)^-1 is large while B is near zero "
                         "and applied to the loss-scaled fp16 gradient, which can overflow and skip steps down to the "
                         "minimum scale; train in bf16 (GPUs from compute capability 8.0) or fp32 (--fp16 False)")
    try:
        model_args.tune_settings()
    except ValueError as error:
        raise SystemExit(str(error)) from None


def build(model_args, training_args, weights: bool = True):
    """The bundle for this stage: from a stage-1 checkpoint when given, else from the bases.
    weights=False: on the meta device, from the configs alone (--dry_run)."""
    from ..model import CheckpointError, Recipe, build_llava, load_checkpoint, select_dtype
    from ..model.checkpoint import is_merged_llava, local_checkpoint
    from .projector import load_projector, projector_file

    dtype = select_dtype(training_args.bf16, training_args.fp16)
    start = training_args.pretrain_mm_mlp_adapter
    if start and not Path(start).is_file() and projector_file(start) is None:  # a stage checkpoint, a merged llava-hf folder or hub id
        try:
            local = local_checkpoint(start, weights)  # a hub id resolved once, here
            bundle = load_checkpoint(local, dtype=dtype, vision_tower=model_args.vision_tower,
                                     language_model=model_args.model_name_or_path, weights=weights,
                                     quantization=model_args.quantization(), template=model_args.template)
        except (CheckpointError, FileNotFoundError) as error:  # ours: what is wrong with it, in one line
            raise SystemExit(f"--pretrain_mm_mlp_adapter {start}: {error}") from None
        if is_merged_llava(local):  # a whole LLaVA: its weights are this stage's base, and its reloads'
            base = str(Path(start).resolve()) if Path(start).is_dir() else start  # a folder, or the hub id
            bundle = replace(bundle, recipe=replace(bundle.recipe, vision_tower=base, language_model=base))
    else:
        if not (model_args.model_name_or_path and model_args.vision_tower):
            raise SystemExit("--model_name_or_path and --vision_tower are required "
                             "(or --pretrain_mm_mlp_adapter with a stage-1 checkpoint directory)")
        bundle = build_llava(model_args.vision_tower, model_args.model_name_or_path,
                             projector_type=model_args.mm_projector_type,
                             vision_feature_layer=model_args.mm_vision_select_layer,
                             vision_feature_select=model_args.mm_vision_select_feature,
                             template=model_args.template, dtype=dtype,
                             trust_remote_code=model_args.trust_remote_code, weights=weights,
                             quantization=model_args.quantization())
        if start and weights:  # a projector file: its tensors are what the dry run leaves out
            try:
                names = load_projector(bundle.model, start)
            except (ValueError, KeyError, FileNotFoundError) as error:  # what is wrong with the file, in one line
                raise SystemExit(f"--pretrain_mm_mlp_adapter {start}: {error}") from None
            bundle.recipe = replace(bundle.recipe, trained_tensors=sorted(set(bundle.recipe.trained_tensors) | set(names)))
    bundle.recipe = Recipe(**{**bundle.recipe.to_dict(), **model_args.tune_settings(),
                              "template": model_args.template, "stage": training_args.stage})
    if model_args.attn_implementation:
        try:
            bundle.model.set_attn_implementation(model_args.attn_implementation)
        except (ValueError, ImportError) as error:  # unknown, or its package / device missing
            raise SystemExit(f"--attn_implementation {model_args.attn_implementation}: {error}") from None
    return bundle


def silence_what_users_cannot_act_on() -> None:
    """DeepSpeed 0.19 gathers with torch's deprecated all_gather_into_tensor, which warns on
    every rank; the fix belongs to DeepSpeed, so the warning is only noise here. bitsandbytes
    (imported by PEFT whenever transformers' Trainer is, QLoRA or not) warns on AVX512-BF16 CPUs
    that the optional `kernels` hub package is missing, then uses its own CPU kernel: the same
    results, and a run with no network could not fetch the hub kernel anyway."""
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)




def run(argv: Optional[Sequence[str]] = None) -> int:
    """main(), with the project's own errors (launch mistakes, bad data, checkpoints) said once, on
    rank 0, in one line, and exit code MISTAKE_EXIT_CODE, instead of a traceback from every rank; any other
    error ends this rank and its workers at once (train/crash.py), exit code 1."""
    try:
        return main(argv)
    except SystemExit as stop:
        if not isinstance(stop.code, str):
            return stop.code or 0
        message = stop.code
    except Exception as error:  # the error classes are imported only now: a launch mistake costs no model import
        from ..data.records import DataError
        from ..model.builder import TokenizerLoadError
        from ..model.recipe import CheckpointError
        from .nonfinite import NonFiniteLoss
        from .trainer import CheckpointSaveError

        if isinstance(error, CheckpointSaveError):  # met by some ranks, maybe not rank 0: each says it
            print(f"llava-moslora train (rank {os.environ.get('RANK', '0')}): {error}", file=sys.stderr, flush=True)
            return MISTAKE_EXIT_CODE
        if not isinstance(error, (DataError, CheckpointError, TokenizerLoadError, NonFiniteLoss)):
            from .crash import crashed

            batch = flag_value(list(sys.argv[1:] if argv is None else argv), "--per_device_train_batch_size")
            return crashed(error, int(batch) if batch and batch.isdigit() else None)
        message = str(error)
    if os.environ.get("RANK", "0") == "0":
        print(f"llava-moslora train: {message}", file=sys.stderr, flush=True)
    return MISTAKE_EXIT_CODE


def main(argv: Optional[Sequence[str]] = None) -> int:
    silence_what_users_cannot_act_on()
    argv = list(sys.argv[1:] if argv is None else argv)
    check_launch(argv)
    argv, notes, _refused = translate(argv)  # LLaVA's flags, read as ours (check_launch refused the rest)
    if notes and os.environ.get("RANK", "0") == "0":
        print("\n".join(f"[llava-moslora] {note}" for note in notes), flush=True)
    if flag_is_on(argv, "--dry_run"):
        return dry_run_report(argv)
    model_args, data_args, training_args = parse(adapt_to_machine(argv))

    from transformers import set_seed

    from ..data.images import set_max_image_pixels

    set_max_image_pixels(data_args.max_image_pixels)  # data-loader workers fork after this: they inherit it

    from ..data import LlavaCollator, LlavaDataset
    from ..data.collator import packed_row_length
    from ..data.mixture import parse_mixture
    from ..data.records import DataError
    from ..model import apply_tuning, parameter_counts, trainable_table
    from ..model.checkpoint import check_resumable
    from ..model.partitioned import partitioned_bytes
    from ..optim import attach_riemannian
    from .interrupt import SaveEveryMinutes, StopOnSignal
    from .metrics import PeakMemoryOfTraining, run_metrics, write_metrics
    from .screen import gather_lists, screen_dataset
    from .trainer import LlavaTrainer

    set_seed(training_args.seed)
    # Under ZeRO-3 the bases load partitioned (transformers builds them in deepspeed.zero.Init,
    # as TrainingArguments carries the DeepSpeed config): no rank holds the whole model. The
    # projector and adapters are made whole and partitioned when the Trainer starts DeepSpeed.
    join_process_group(training_args)
    bundle = build(model_args, training_args)
    apply_tuning(bundle.model, bundle.recipe)
    # The language model reads its own config: off there too, or every forward builds a KV cache
    # (memory for nothing in training, and transformers then ignores --packing's position_ids).
    bundle.model.config.use_cache = bundle.model.config.text_config.use_cache = False
    main_process = training_args.process_index == 0
    if main_process:
        print(trainable_table(bundle.model), flush=True)
        if training_args.zero_stage() == 3:
            held, whole_size = partitioned_bytes(bundle.model)
            print(f"[llava-moslora] ZeRO-3: the bases loaded partitioned, this rank holds {held / 2**20:.1f} MiB of "
                  f"their {whole_size / 2**20:.1f} MiB", flush=True)
    try:
        mixture = parse_mixture(data_args.data_mixture) if data_args.data_mixture else None
    except DataError as error:
        raise SystemExit(str(error)) from None
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    dataset = LlavaDataset(data_args.data_path, bundle.tokenizer, bundle.image_processor, bundle.recipe.template,
                           num_image_tokens=bundle.recipe.num_image_tokens, image_folder=data_args.image_folder,
                           model_max_length=training_args.model_max_length, system=data_args.system_prompt,
                           collect_rejected=True, skip_bad_samples=training_args.skip_bad_samples,
                           mixture=mixture, mixture_seed=seed)
    try:
        findings = screen_dataset(dataset, skip=training_args.skip_bad_samples, rank=training_args.process_index,
                                  world_size=training_args.world_size, output_dir=training_args.output_dir)
    except DataError as error:  # every rank has the same verdict: leave together, say it once
        if main_process:
            print(f"[llava-moslora] {error}", file=sys.stderr, flush=True)
        shut_down_process_group()
        return MISTAKE_EXIT_CODE
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir, main_process)
    if resume:
        check_resumable(resume, bundle.model, bundle.recipe)
    collator = LlavaCollator(bundle.tokenizer.pad_token_id, with_ids=True, packing=training_args.packing,
                             max_length=packed_row_length(bundle.model.config.text_config._attn_implementation,
                                                          training_args.model_max_length))
    if training_args.riemannian:
        attach_riemannian(bundle.model, reg=training_args.riemannian_reg)
    stop = StopOnSignal()
    peak = PeakMemoryOfTraining()
    callbacks = [stop, peak] + ([SaveEveryMinutes(training_args.save_minutes)]
                                                   if training_args.save_minutes > 0 else [])
    trainer = LlavaTrainer(model=bundle.model, args=training_args, train_dataset=dataset,
                           data_collator=collator, bundle=bundle, callbacks=callbacks)
    if resume:
        trainer.record.load(Path(resume), training_args.process_index)
    result = trainer.train(resume_from_checkpoint=resume)
    skipped = gather_lists(trainer.skipped_ids)
    if main_process:
        start = sum(f.is_error for f in findings)
        during = list(dict.fromkeys(skipped))  # a sample can be drawn more than once (sampler padding)
        drawn = f" (drawn {len(skipped)} times): {during[:10]}" if skipped else ""
        seen = dict(zip(("samples", "fully_masked", "truncated"), trainer.label_counts))
        print(f"[llava-moslora] data: {seen} (this rank's batches); skipped bad samples: "
              f"{start} before training, {len(during)} during it{drawn}", flush=True)
        if mixture is not None:
            print("[llava-moslora] mixture: " + ", ".join(
                f"{path} {count} samples ({part.share})" for part, (path, count)
                in zip(mixture, dataset.mixture_counts().items())), flush=True)
    if stop.stopped_by:
        checkpoint = Path(training_args.output_dir) / f"checkpoint-{trainer.state.global_step}"
        if main_process:
            print(f"[llava-moslora] stopped by {signal.Signals(stop.stopped_by).name} at step "
                  f"{trainer.state.global_step}; resumable checkpoint: {checkpoint} "
                  "(continue with --resume_from_checkpoint auto)", flush=True)
        shut_down_process_group()
        return 128 + stop.stopped_by  # the shell's convention for "ended by this signal"
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    trainable = {name: counts[0] for name, counts in parameter_counts(bundle.model).items()}
    metrics = run_metrics(trainer.record, training_args, trainer.state, result.metrics.get("train_runtime", 0.0),
                          trainable, resume, peak.startup)
    metrics["nonfinite_steps"] = trainer.nonfinite.skipped  # steps with a micro-batch left out (train/nonfinite.py)
    if mixture is not None:
        metrics["mixture"] = dataset.mixture_counts()  # samples per source in the epoch's draw
    if main_process:
        write_metrics(training_args.output_dir, metrics)
        print(f"[llava-moslora] {metrics['tokens']} tokens trained on, {metrics['processed_tokens']} processed with "
              f"padding ({metrics['processed_per_real_token']} per token), {metrics['tokens_per_second']} tokens/s",
              flush=True)
        print(f"[llava-moslora] stage checkpoint written to {training_args.output_dir}", flush=True)
    shut_down_process_group()
    return 0


def dry_run_report(argv: list[str]) -> int:
    """--dry_run: the model from its configs, tuned as this run would tune it; the report; exit 0.
    It touches no device and starts no process group, so it runs on a login node: the flags are
    parsed as for the CPU, with the DeepSpeed config read only for its ZeRO stage and the
    precision flags only for the width of the weights."""
    from ..model import apply_tuning
    from .dry_run import dry_run

    # as the ranks would train here: half where this machine has a GPU (adapt_to_machine), else as given
    half = flag_is_on(argv, "--bf16", "--fp16") or (torch.cuda.is_available() and not precision_chosen(argv, ("--bf16", "--fp16")))
    deepspeed = flag_value(argv, "--deepspeed")
    model_args, data_args, training_args = parse(CPU_FLAGS + without_flags(argv, ("--deepspeed",) + GPU_ONLY_FLAGS))
    training_args.deepspeed = deepspeed
    refuse_impossible(model_args, training_args)
    bundle = build(model_args, training_args, weights=False)
    apply_tuning(bundle.model, bundle.recipe)
    world = training_args.dry_run_world or int(os.environ.get("WORLD_SIZE", "1"))
    print(dry_run(bundle, training_args, data_args.data_path or data_args.data_mixture, world, half,
                  mixture=bool(data_args.data_mixture)), flush=True)
    return 0


def resolve_resume(value: Optional[str], output_dir: str, verbose: bool) -> Optional[str]:
    """--resume_from_checkpoint: a path as given, or "auto" = the newest sound checkpoint-N in the
    output directory (None when there is none: a fresh start); damaged newer ones are named."""
    if value != "auto":
        return value
    skipped: list = []
    found = newest_checkpoint(output_dir, skipped)
    if verbose:
        for path, bad in skipped:
            print(f"[llava-moslora] warning: --resume_from_checkpoint auto passes over {path}, which is damaged: "
                  f"{'; '.join(bad[:3])}", file=sys.stderr, flush=True)
        print(f"[llava-moslora] --resume_from_checkpoint auto: "
              f"{f'resuming from {found}' if found else f'no checkpoint in {output_dir}, starting from step 0'}",
              flush=True)
    return str(found) if found else None


def newest_checkpoint(output_dir: str, skipped: Optional[list] = None) -> Optional[Path]:
    """The checkpoint-N to resume from. Checkpoints are renamed into place only when complete
    (.staging/ holds unfinished ones); the trainer-state and file checks also pass over ones
    that a disk or copy fault damaged, or that older versions or other tools left incomplete."""
    from ..model.checkpoint import newest_complete_checkpoint

    return newest_complete_checkpoint(output_dir, skipped)


def shut_down_process_group() -> None:
    """Leave the process group together: without it, a rank's gloo threads can still be running
    while the interpreter exits, which aborts that rank ("terminate called without an active
    exception") after a finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_without_teardown(code: int) -> None:
    """End a rank once everything is written: flush, then leave without the interpreter's
    teardown, where a native thread that gloo or DeepSpeed's shared-memory op still holds can
    abort the process ("terminate called without an active exception", SIGABRT) after a run
    that finished; torchrun would then report the whole run as failed."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    exit_without_teardown(run())
