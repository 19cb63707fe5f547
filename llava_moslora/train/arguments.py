"""Training flags: data settings and TrainingArguments with LLaVA's and this project's additions."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from ..data.images import MAX_IMAGE_PIXELS
from .preflight import zero_stage


@dataclass
class DataArguments:
    data_path: str = field(default=None, metadata={"help": "Conversations (LLaVA's conversations + image, or messages + images; one <image> per image, several allowed) as JSON, JSONL, .parquet, .arrow, a `datasets` folder or dataset id; images as paths under --image_folder, base64, or bytes stored in the table. Several sources joined with commas."})
    data_mixture: Optional[str] = field(default=None, metadata={"help": "Several sources instead of --data_path, each with a weight (a number with a point: shares of the weighted sources' samples together, drawn at random) or a count (a whole number of samples), e.g. a.json:0.7,b.parquet:0.3,c.jsonl:2000; drawn once from --data_seed (else --seed)."})
    image_folder: Optional[str] = field(default=None, metadata={"help": "Folder the samples' image paths are relative to."})
    max_image_pixels: int = field(default=MAX_IMAGE_PIXELS, metadata={"help": "Refuse (or with --skip_bad_samples skip) images over this many pixels, read from their header before decoding (0: no limit)."})
    system_prompt: Optional[str] = field(default=None, metadata={"help": "Override the template's system prompt."})


@dataclass
class LlavaTrainingArguments(TrainingArguments):
    model_max_length: int = field(default=2048, metadata={"help": "Longest sequence (image tokens included); longer samples are truncated after the image."})
    packing: bool = field(default=False, metadata={"help": "Pack each batch's samples into rows of up to --model_max_length tokens, attention confined to each sample (position_ids restart per sample): no compute on padding, the same samples per step and the same loss."})
    group_by_modality_length: bool = field(default=False, metadata={"help": "Draw each batch from image or text-only samples alone, grouped by length (LLaVA)."})
    mm_projector_lr: Optional[float] = field(default=None, metadata={"help": "Learning rate of the projector (default: --learning_rate)."})
    router_lr: Optional[float] = field(default=None, metadata={"help": "Learning rate of MoE-LoRA routers (default: --learning_rate; the paper used a far smaller one)."})
    logits_at_labels: bool = field(default=True, metadata={"help": "Compute the language-model head only at positions that predict a label (not at image tokens or prompts): the same loss and gradients, a fraction of the logits' memory. False: every position, as LLaVA does."})
    riemannian: bool = field(default=False, metadata={"help": "Riemannian-precondition adapter gradients (with SGD: RSGD; AdamW: scaled AdamW). ZeRO-1/2 only."})
    riemannian_reg: float = field(default=1e-6, metadata={"help": "Damping added to the r x r preconditioner Gram matrices."})
    pretrain_mm_mlp_adapter: Optional[str] = field(default=None, metadata={"help": "Stage-1 checkpoint directory, or a projector: LLaVA's mm_projector.bin, XTuner's iter_N.pth / epoch_1.pth or projector/ folder, a .safetensors file."})
    save_minutes: float = field(default=0.0, metadata={"help": "Also save a resumable checkpoint whenever this many minutes passed since the last one (0: off; the stage scripts pass SAVE_MINUTES, default 30), so a crash loses at most that much. Every rank saves at the same step."})
    max_nonfinite_steps: int = field(default=3, metadata={"help": "Steps in a row whose loss is not finite (NaN, inf) before the run stops naming them and their samples; such a micro-batch is left out of its step and counted (train_metrics.json: nonfinite_steps). 0: never stop."})
    stage: int = field(default=2, metadata={"help": "1: projector alignment, 2: visual instruction tuning (recorded in the checkpoint)."})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": "A checkpoint-N folder to continue from, or auto: the newest complete one in --output_dir (from step 0 when there is none)."})
    skip_bad_samples: bool = field(default=False, metadata={"help": "Leave out bad samples (found before step 1, or an image that fails when drawn) and count them, instead of stopping before step 1 with their ids."})
    dry_run: bool = field(default=False, metadata={"help": "Build the model on the meta device from the configs (no weights read), print the trainable parameters, the batch arithmetic and a per-GPU memory estimate for ZeRO-2 and ZeRO-3, and exit."})
    dry_run_world: Optional[int] = field(default=None, metadata={"help": "Processes the dry run assumes (the scripts pass theirs; default: WORLD_SIZE or 1)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Kept False: the collator needs every field."})

    def zero_stage(self) -> int:
        """The DeepSpeed ZeRO stage of --deepspeed (0 without DeepSpeed)."""
        return zero_stage(self.deepspeed)
