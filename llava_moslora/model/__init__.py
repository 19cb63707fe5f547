"""Model: LLaVA built from a vision tower and an LLM, tune modes, stage checkpoints, merge and export."""
from .arguments import ModelArguments
from .builder import LlavaBundle, build_llava, make_processor
from .checkpoint import load_checkpoint, save_checkpoint, trained_tensor_names
from .recipe import RECIPE_FILE, TRAINABLE_FILE, CheckpointError, Recipe
from .tuning import (DTYPES, apply_tuning, enable_activation_checkpointing, inference_device, inference_dtype,
                     parameter_counts, select_dtype, trainable_kinds_table, trainable_table)

__all__ = [
    "CheckpointError", "DTYPES", "LlavaBundle", "ModelArguments", "RECIPE_FILE", "Recipe", "TRAINABLE_FILE", "apply_tuning", "build_llava",
    "enable_activation_checkpointing", "inference_device", "inference_dtype", "select_dtype",
    "load_checkpoint", "make_processor", "parameter_counts", "save_checkpoint", "trainable_kinds_table", "trainable_table",
    "trained_tensor_names",
]
