"""The supervised LLaVA dataset: checked samples in, (input_ids, labels, pixel_values) out."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .images import ImageError, open_image, preprocess_image
from .mixture import Part, mix
from .record_cache import SampleTable, open_samples
from .records import DataError, Sample, is_file_image
from .own_chat_template import template_for
from .templates import Template
from .tokenize import check_tokenizer, encode_conversation
from .validate import SampleChecker

# How far __getitem__ looks for a readable substitute before giving up on --skip_bad_samples.
MAX_SUBSTITUTE_TRIES = 64


class LlavaDataset(Dataset):
    """Conversation data (records.py's forms and sources) with images read lazily.

    Records are parsed and checked when the dataset is built, so malformed data fails before
    training starts; images (files under `image_folder`, or stored in the data) are decoded when
    their sample is drawn. With collect_rejected,
    bad records are kept in `rejected` instead of raising, for training's screen to report them
    all at once. With skip_bad_samples, a sample that fails when drawn (a corrupt image) is
    replaced by the next good one, and the item lists the failed ids under "skipped_ids".
    """

    def __init__(self, data_path: Union[str, Path], tokenizer, image_processor, template: Union[str, Template], *,
                 num_image_tokens: int, image_folder: Optional[Union[str, Path]] = None,
                 model_max_length: int = 2048, system: Optional[str] = None, collect_rejected: bool = False,
                 skip_bad_samples: bool = False, mixture: Optional[list[Part]] = None, mixture_seed: int = 0) -> None:
        self.data_path = data_path if mixture is None else ",".join(f"{p.path}:{p.weight or p.count}" for p in mixture)
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
        rejected = self.rejected if collect_rejected else None
        # `samples` holds each distinct sample once (what the screen checks); `plan`, with a
        # mixture, the positions in it that make up the dataset (a sample may come twice)
        self.plan: Optional[list[int]] = None
        self.mixture, self.part_of = mixture, None
        if mixture is None:
            # a list, or for a big file a SampleTable: the same samples, memory-mapped
            self.samples: Sequence[Sample] = open_samples(self.data_path, rejected)
        else:
            sources = [list(open_samples(part.path, rejected)) for part in mixture]
            self.samples, self.part_of, self.plan = mix(mixture, sources, mixture_seed)
        if not self.samples:
            raise DataError(f"{self.data_path}: no samples")
        if self.image_folder is None and not collect_rejected:
            first = (self.samples.first_with_image_file() if isinstance(self.samples, SampleTable)
                     else next((s for s in self.samples if any(map(is_file_image, s.images))), None))
            if first is not None:
                raise DataError(f"{self.data_path}: sample {first.id!r} has an image file but no --image_folder "
                                "was given")

    def __len__(self) -> int:
        return len(self.samples) if self.plan is None else len(self.plan)

    @property
    def modality_lengths(self) -> list[int]:
        if self.plan is not None:
            return [self.samples[i].modality_length for i in self.plan]
        if isinstance(self.samples, SampleTable):
            return self.samples.modality_lengths()
        return [s.modality_length for s in self.samples]

    def mixture_counts(self) -> Optional[dict[str, int]]:
        """Samples each mixture source gives (after any bad ones were left out), by source path."""
        if self.mixture is None:
            return None
        counted = Counter(self.part_of[i] for i in self.plan)
        return {part.path: counted.get(k, 0) for k, part in enumerate(self.mixture)}

    def checker(self, image_check: str = "header") -> SampleChecker:
        """The validate-data checks under this dataset's template, tokenizer and length."""
        return SampleChecker(self.template, self.tokenizer, self.num_image_tokens, self.model_max_length,
                             self.image_folder, self.system, image_check)

    def exclude(self, indices) -> None:
        """Drop the samples at these positions (bad ones found before training)."""
        drop = set(indices)
        if self.plan is not None:  # the mixture's positions follow the samples that remain
            kept = [i for i in range(len(self.samples)) if i not in drop]
            moved = {old: new for new, old in enumerate(kept)}
            self.plan = [moved[i] for i in self.plan if i in moved]
            self.part_of = [self.part_of[i] for i in kept]
        if isinstance(self.samples, SampleTable):
            self.samples = self.samples.without(sorted(drop))
        else:
            self.samples = [sample for i, sample in enumerate(self.samples) if i not in drop]
        if not self.samples:
            raise DataError(f"{self.data_path}: no valid samples left")

    def __getitem__(self, index: int) -> dict:
        if not self.skip_bad_samples:
            return self._item(self._position(index))
        skipped = []
        for offset in range(MAX_SUBSTITUTE_TRIES):
            position = self._position((index + offset) % len(self))
            try:
                item = self._item(position)
            except DataError as error:
                skipped.append(self.samples[position].id)
                print(f"[llava-moslora] skipping a bad sample: {error}", file=sys.stderr, flush=True)
                continue
            return {**item, "skipped_ids": skipped}
        raise DataError(f"{self.data_path}: {MAX_SUBSTITUTE_TRIES} bad samples in a row from #{index} "
                        f"(ids {skipped[:5]}...); is the image folder right?")

    def _position(self, index: int) -> int:
        """Where the dataset's `index`-th item is in `samples`."""
        return index if self.plan is None else self.plan[index]

    def _item(self, index: int) -> dict:
        sample = self.samples[index]
        pixel_values = None
        if sample.images:  # (images, 3, H, W), in the order of the sample's <image> placeholders
            try:
                pixel_values = torch.stack([preprocess_image(open_image(image, self.image_folder), self.image_processor)
                                            for image in sample.images])
            except ImageError as error:
                raise DataError(f"{self.data_path}, sample {sample.id!r}: {error}") from None
        try:
            encoded = encode_conversation(
                self.template, self.tokenizer, sample.turns, system=sample.system if sample.system is not None else self.system,
                num_image_tokens=self.num_image_tokens, num_images=len(sample.images), max_length=self.model_max_length)
        except ValueError as error:  # SampleTooLong, or an <image> count the text does not match
            raise DataError(f"{self.data_path}, sample {sample.id!r}: {error}") from None
        return {
            "id": sample.id,
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "truncated": encoded.truncated,
        }
