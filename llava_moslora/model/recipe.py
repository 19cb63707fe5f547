"""The recipe: everything needed to rebuild a model from its base checkpoints.

It is written as `llava_moslora.json` in every stage checkpoint; loading reads it instead of
guessing from folder names.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

RECIPE_FILE = "llava_moslora.json"
TRAINABLE_FILE = "trainable.safetensors"
FORMAT_VERSION = 1
TUNE_MODES = {"vision_tower": ("frozen", "full", "adapter"), "mm_projector": ("frozen", "full"),
              "language_model": ("frozen", "full", "adapter")}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or used as asked; the message says what and why (one of
    the project's own errors: reported in one line, without a traceback)."""


def check_tune_modes(settings: dict[str, str]) -> None:
    """ValueError unless every tune_<component> value is one of that component's modes."""
    for component, modes in TUNE_MODES.items():
        value = settings[f"tune_{component}"]
        if value not in modes:
            raise ValueError(f"tune_{component} must be one of {modes}, got {value!r}")


@dataclass
class Recipe:
    vision_tower: str
    language_model: str
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    template: str = "vicuna_v1"
    num_image_tokens: int = 0
    stage: Optional[int] = None
    tune_vision_tower: str = "frozen"
    tune_mm_projector: str = "full"
    tune_language_model: str = "frozen"
    llm_adapter: Optional[dict] = None      # AdapterConfig.to_dict() when the LLM has adapters
    vision_adapter: Optional[dict] = None   # likewise for the vision tower
    quantization: Optional[dict] = None     # quantize.Quantization.to_dict() of a QLoRA language model
    trust_remote_code: bool = False         # the bases run code from their folders (InternLM2): reloads too
    # Names of the tensors stored in trainable.safetensors: every tensor that differs from the
    # base checkpoints, including ones trained by earlier stages.
    trained_tensors: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_tune_modes({f"tune_{c}": getattr(self, f"tune_{c}") for c in TUNE_MODES})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        known = {f.name for f in fields(cls)}
        if data.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise CheckpointError(f"recipe format {data['format_version']} is newer than this llava-moslora "
                             f"understands ({FORMAT_VERSION}); upgrade llava-moslora")
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / RECIPE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "Recipe":
        path = Path(directory) / RECIPE_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path} is not valid JSON: {error}") from None
