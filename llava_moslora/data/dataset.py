"""The supervised LLaVA dataset: checked samples in, (input_ids, labels, pixel_values) out."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .images import ImageError, load_image, preprocess_image
from .record_cache import SampleTable, open_samples
from .records import DataError, Sample
from .own_chat_template import template_for
from .templates import Template
from .tokenize import check_tokenizer, encode_conversation
from .validate import SampleChecker

# How far __getitem__ looks for a readable substitute before giving up on --skip_bad_samples.
MAX_SUBSTITUTE_TRIES = 64


class LlavaDataset(Dataset):
    """LLaVA JSON/JSONL (or a `datasets` directory) with images read lazily from `image_folder`.

    Records are parsed and checked when the dataset is built, so malformed data fails before
    training starts; image files are opened when a sample is first drawn. With collect_rejected,
    bad records are kept in `rejected` instead of raising, for training's screen to report them
    all at once. With skip_bad_samples, a sample that fails when drawn (a corrupt image) is
    replaced by the next good one, and the item lists the failed ids under "skipped_ids".
    """

    def __init__(self, data_path: Union[str, Path], tokenizer, image_processor, template: Union[str, Template], *,
                 num_image_tokens: int, image_folder: Optional[Union[str, Path]] = None,
                 model_max_length: int = 2048, system: Optional[str] = None, collect_rejected: bool = False,
                 skip_bad_samples: bool = False) -> None:
        self.data_path = data_path
        self.template = template_for(template, tokenizer) if isinstance(template, str) else template
        check_tokenizer(self.template, tokenizer)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.num_image_tokens = num_image_tokens
        self.image_folder = Path(image_folder) if image_folder else None
        self.model_max_length = model_max_length
        self.system = system
        self.skip_bad_samples = skip_bad_samples
        self.rejected: list[DataError] = []
        # a list, or for a big file a SampleTable: the same samples, memory-mapped
        self.samples: Sequence[Sample] = open_samples(self.data_path, self.rejected if collect_rejected else None)
        if not self.samples:
            raise DataError(f"{self.data_path}: no samples")
        if self.image_folder is None and not collect_rejected:
            first = (self.samples.first_with_image() if isinstance(self.samples, SampleTable)
                     else next((s for s in self.samples if s.image), None))
            if first is not None:
                raise DataError(f"{self.data_path}: sample {first.id!r} has an image but no --image_folder was given")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def modality_lengths(self) -> list[int]:
        if isinstance(self.samples, SampleTable):
            return self.samples.modality_lengths()
        return [s.modality_length for s in self.samples]

    def image_path(self, sample: Sample) -> Path:
        return self.image_folder / sample.image

    def checker(self, image_check: str = "header") -> SampleChecker:
        """The validate-data checks under this dataset's template, tokenizer and length."""
        return SampleChecker(self.template, self.tokenizer, self.num_image_tokens, self.model_max_length,
                             self.image_folder, self.system, image_check)

    def exclude(self, indices) -> None:
        """Drop the samples at these positions (bad ones found before training)."""
        drop = set(indices)
        if isinstance(self.samples, SampleTable):
            self.samples = self.samples.without(sorted(drop))
        else:
            self.samples = [sample for i, sample in enumerate(self.samples) if i not in drop]
        if not self.samples:
            raise DataError(f"{self.data_path}: no valid samples left")

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad_samples:
            return self._item(index)
        skipped = []
        for offset in range(MAX_SUBSTITUTE_TRIES):
            try:
                item = self._item((index + offset) % len(self.samples))
            except DataError as error:
                skipped.append(self.samples[(index + offset) % len(self.samples)].id)
                print(f"[llava-moslora] skipping a bad sample: {error}", file=sys.stderr, flush=True)
                continue
            return {**item, "skipped_ids": skipped}
        raise DataError(f"{self.data_path}: {MAX_SUBSTITUTE_TRIES} bad samples in a row from #{index} "
                        f"(ids {skipped[:5]}...); is the image folder right?")

    def _item(self, index: int) -> dict:
        sample = self.samples[index]
        pixel_values = None
        if sample.image:
            try:
                pixel_values = preprocess_image(load_image(self.image_path(sample)), self.image_processor)
            except ImageError as error:
                raise DataError(f"{self.data_path}, sample {sample.id!r}: {error}") from None
        try:
            encoded = encode_conversation(
                self.template, self.tokenizer, sample.turns, system=sample.system if sample.system is not None else self.system,
                num_image_tokens=self.num_image_tokens if sample.image else 0, max_length=self.model_max_length)
        except ValueError as error:  # SampleTooLong, or an <image> count the text does not match
            raise DataError(f"{self.data_path}, sample {sample.id!r}: {error}") from None
        return {
            "id": sample.id,
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "truncated": encoded.truncated,
        }
