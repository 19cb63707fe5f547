"""Batching: padding, attention mask, stacked images, and the guard against masked labels.

LLaVA's most common silent failure is a run whose labels are all masked (a template that does
not match the tokenizer, or truncation that cuts every reply): the loss is zero or undefined and
nothing learns. The guard counts such samples and stops the run early, saying why.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn.utils.rnn import pad_sequence

from .tokenize import IGNORE_INDEX


class MaskedLabelsError(RuntimeError):
    pass


@dataclass
class MaskedLabelGuard:
    """Counts truncated and fully-masked samples; raises when, among the first `watch_samples`,
    more than `max_fraction` of at least `min_samples` are fully masked."""

    max_fraction: float = 0.1
    min_samples: int = 16
    watch_samples: int = 512
    seen: int = 0
    fully_masked: int = 0
    truncated: int = 0
    masked_ids: list = field(default_factory=list)

    def update(self, features: list[dict]) -> list[int]:
        """Count a batch's samples; returns its [samples, fully masked, truncated]."""
        counts = [len(features), 0, 0]
        for feature in features:
            self.seen += 1
            counts[2] += bool(feature.get("truncated"))
            if bool((feature["labels"] == IGNORE_INDEX).all()):
                counts[1] += 1
                if len(self.masked_ids) < 10:
                    self.masked_ids.append(feature.get("id"))
        self.fully_masked += counts[1]
        self.truncated += counts[2]
        if self.min_samples <= self.seen <= self.watch_samples and self.fully_masked > self.max_fraction * self.seen:
            raise MaskedLabelsError(
                f"{self.fully_masked} of the first {self.seen} samples have every label masked "
                f"(e.g. ids {self.masked_ids}), so they teach nothing. Usual causes: a --template that "
                "does not match the language model's tokenizer, or --model_max_length too short for the "
                f"image tokens plus the replies ({self.truncated} of them were truncated).")
        return counts

    def summary(self) -> dict:
        return {"samples": self.seen, "fully_masked": self.fully_masked, "truncated": self.truncated}


class LlavaCollator:
    """Pads a list of dataset items into a batch for LlavaForConditionalGeneration.

    pixel_values holds the images of the image samples only, in batch order: the model fills
    the image tokens of the batch with them in that order, and text-only samples have none.
    skipped_ids (only when some) lists the samples the dataset replaced; the trainer removes it.
    sample_ids (with_ids=True) lists the batch's sample ids in order, for the trainer's record of
    the data order, and label_counts its [samples, fully masked, truncated] (the guard's counts
    live in whichever process collates: a data-loader worker when there are workers); the
    trainer removes both.
    """

    def __init__(self, pad_token_id: int, guard: MaskedLabelGuard | None = None, with_ids: bool = False) -> None:
        self.pad_token_id = pad_token_id
        self.guard = guard if guard is not None else MaskedLabelGuard()
        self.with_ids = with_ids

    def __call__(self, features: list[dict]) -> dict:
        counts = self.guard.update(features)
        input_ids = pad_sequence([f["input_ids"] for f in features], batch_first=True, padding_value=self.pad_token_id)
        labels = pad_sequence([f["labels"] for f in features], batch_first=True, padding_value=IGNORE_INDEX)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        images = [f["pixel_values"] for f in features if f.get("pixel_values") is not None]
        if images:
            batch["pixel_values"] = torch.stack(images)
        skipped = [sample_id for f in features for sample_id in f.get("skipped_ids", ())]
        if skipped:  # bad samples the dataset replaced (--skip_bad_samples); the trainer counts them
            batch["skipped_ids"] = skipped
        if self.with_ids:
            batch["sample_ids"] = [f.get("id") for f in features]
            batch["label_counts"] = counts
        return batch
