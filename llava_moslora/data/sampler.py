"""Modality-length grouping (LLaVA's --group_by_modality_length).

Image and text-only samples differ a lot in length (hundreds of image tokens). Batches drawn
from one modality at a time, sorted by length inside each mega-batch, waste less padding and
keep each step's compute balanced across ranks.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import Sampler


def _length_grouped(lengths: list[int], indices: list[int], megabatch: int, generator) -> list[list[int]]:
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    chunks = [order[i:i + megabatch] for i in range(0, len(order), megabatch)]
    return [sorted(chunk, key=lambda i: abs(lengths[i]), reverse=True) for chunk in chunks]


def modality_grouped_indices(lengths: list[int], batch_size: int, world_size: int = 1,
                             generator: Optional[torch.Generator] = None) -> list[int]:
    """A permutation of range(len(lengths)) in which every run of batch_size * world_size
    indices comes from one modality (positive length: image, negative: text-only), except a
    single mixed run made of both modalities' leftovers, placed last."""
    if any(length == 0 for length in lengths):
        raise ValueError("modality lengths must be non-zero (positive for image, negative for text samples)")
    megabatch = batch_size * world_size
    image = [i for i, length in enumerate(lengths) if length > 0]
    text = [i for i, length in enumerate(lengths) if length < 0]
    full, leftover = [], []
    for group in (image, text):
        if not group:
            continue
        chunks = _length_grouped(lengths, group, megabatch, generator)
        if len(chunks[-1]) < megabatch:
            leftover += chunks.pop()
        full += chunks
    order = torch.randperm(len(full), generator=generator).tolist()
    result = [i for position in order for i in full[position]]
    return result + leftover


class ModalityLengthGroupedSampler(Sampler[int]):
    """Sampler over a dataset's modality_lengths; reshuffles each epoch from seed + epoch."""

    def __init__(self, lengths: list[int], batch_size: int, world_size: int = 1, seed: int = 0) -> None:
        self.lengths, self.batch_size, self.world_size, self.seed = list(lengths), batch_size, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.batch_size, self.world_size, generator))
