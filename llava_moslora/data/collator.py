"""Batching: padding (or packing), attention mask, stacked images, and the guard against masked
labels.

Packing (--packing) puts several samples in one row, with no attention mask: position_ids
restart at 0 at every sample, and transformers derives from them a mask that confines attention
to each sample (block-diagonal for sdpa/eager; the varlen kernel for flash_attention_2). Rows
hold up to max_length tokens, since sdpa and eager compute the whole row's attention square; a
varlen kernel computes each sample's own, so there the batch is one row (max_length None) and no
position is padding. A sample's first label is dropped: within its own sample nothing predicts
it, and packed, the previous sample's last token would.

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


def pack_rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Sample indices per row, each row at most `capacity` tokens (None: one row). Every row is
    padded to the longest, so of two packings, the one that processes fewer positions: rows filled
    one by one (first-fit decreasing) and the fewest rows made even (longest first, each to the
    emptiest row); neither is always better. A sample longer than `capacity` gets a row of its
    own. Rows in the order of their first sample, samples in batch order within a row, so the
    packing depends on the batch alone."""
    if capacity is None:
        return [list(range(len(lengths)))]
    alone = [[i] for i, length in enumerate(lengths) if length > capacity]
    rest = sorted((i for i, length in enumerate(lengths) if length <= capacity), key=lambda i: (-lengths[i], i))
    best = min((_first_fit(rest, lengths, capacity), _even_rows(rest, lengths, capacity)),
               key=lambda rows: len(rows) * max((sum(lengths[i] for i in row) for row in rows), default=0))
    return sorted((sorted(row) for row in best + alone), key=lambda row: row[0])


def _first_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    rows, room = [], []
    for index in order:
        row = next((r for r, free in enumerate(room) if lengths[index] <= free), None)
        if row is None:
            rows.append([index])
            room.append(capacity - lengths[index])
        else:
            rows[row].append(index)
            room[row] -= lengths[index]
    return rows


def _even_rows(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    count = -(-sum(lengths[i] for i in order) // capacity)
    while order:
        rows, loads = [[] for _ in range(count)], [0] * count
        for index in order:
            emptiest = min(range(count), key=lambda r: (loads[r], r))
            rows[emptiest].append(index)
            loads[emptiest] += lengths[index]
        if max(loads) <= capacity:
            return rows
        count += 1  # these lengths do not fit the fewest rows: one more
    return []


def packed_row_length(attn_implementation: str | None, max_length: int) -> int | None:
    """The most tokens a packed row holds under this attention kernel: max_length for kernels
    that compute the row's whole attention square (sdpa, eager), none (one row per batch) for
    the varlen flash kernels, whose cost is each sample's own."""
    return None if attn_implementation and "flash" in attn_implementation else max_length


class LlavaCollator:
    """Pads (or packs) a list of dataset items into a batch for LlavaForConditionalGeneration.

    pixel_values holds the images of the image samples only, in the order their samples appear
    in the batch (row by row) and each sample's in its own order: the model fills the image
    tokens with them in that order, and text-only samples have none. skipped_ids (only when some) lists the samples the dataset
    replaced; the trainer removes it. sample_ids (with_ids=True) lists the batch's sample ids in
    the sampler's order (packed or not), for the trainer's record of the data order;
    token_counts its [real, processed] tokens (processed: padding included); label_counts its
    [samples, fully masked, truncated] (the guard's counts live in whichever process collates: a
    data-loader worker when there are workers); the trainer removes all three.
    """

    def __init__(self, pad_token_id: int, guard: MaskedLabelGuard | None = None, with_ids: bool = False,
                 packing: bool = False, max_length: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.guard = guard if guard is not None else MaskedLabelGuard()
        self.with_ids = with_ids
        self.packing, self.max_length = packing, max_length

    def __call__(self, features: list[dict]) -> dict:
        counts = self.guard.update(features)
        if self.packing:
            rows = pack_rows([len(f["input_ids"]) for f in features], self.max_length)
            batch = self._packed([[features[i] for i in row] for row in rows])
            ordered = [features[i] for row in rows for i in row]
        else:
            batch, ordered = self._padded(features), features
        images = [f["pixel_values"] for f in ordered if f.get("pixel_values") is not None]
        if images:  # a sample's images are (n, 3, H, W) (one image: (3, H, W) is taken too)
            batch["pixel_values"] = torch.cat([image if image.dim() == 4 else image[None] for image in images])
        skipped = [sample_id for f in features for sample_id in f.get("skipped_ids", ())]
        if skipped:  # bad samples the dataset replaced (--skip_bad_samples); the trainer counts them
            batch["skipped_ids"] = skipped
        if self.with_ids:
            batch["sample_ids"] = [f.get("id") for f in features]
            batch["token_counts"] = [sum(len(f["input_ids"]) for f in features), batch["input_ids"].numel()]
            batch["label_counts"] = counts
        return batch

    def _padded(self, features: list[dict]) -> dict:
        input_ids = pad_sequence([f["input_ids"] for f in features], batch_first=True, padding_value=self.pad_token_id)
        labels = pad_sequence([f["labels"] for f in features], batch_first=True, padding_value=IGNORE_INDEX)
        lengths = torch.tensor([len(f["input_ids"]) for f in features])
        attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _packed(self, rows: list[list[dict]]) -> dict:
        width = max(sum(len(f["input_ids"]) for f in row) for row in rows)
        input_ids, labels, positions = [], [], []
        for row in rows:
            pad = width - sum(len(f["input_ids"]) for f in row)
            input_ids.append(torch.cat([f["input_ids"] for f in row] +
                                       [torch.full((pad,), self.pad_token_id, dtype=row[0]["input_ids"].dtype)]))
            labels.append(torch.cat([torch.cat([torch.tensor([IGNORE_INDEX], dtype=f["labels"].dtype), f["labels"][1:]])
                                     for f in row] + [torch.full((pad,), IGNORE_INDEX, dtype=row[0]["labels"].dtype)]))
            # the padding is a segment of its own, so no sample attends to it
            positions.append(torch.cat([torch.arange(len(f["input_ids"])) for f in row] + [torch.arange(pad)]))
        return {"input_ids": torch.stack(input_ids), "labels": torch.stack(labels), "position_ids": torch.stack(positions)}
