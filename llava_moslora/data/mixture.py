"""--data_mixture: several data sources at chosen weights or sample counts, drawn once from a seed.

"a.json:0.7,b.parquet:0.3,c.jsonl:2000": a weight (a number with a decimal point) shares out, at
random in proportion to the weights, as many samples as the weighted sources hold together; a
count (a whole number) takes exactly that many from its source. A source gives its samples in a
seeded order and starts over when asked for more than it has, so the same seed and sources give
the same mixture (and a resumed run the same data order).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from .records import DataError


@dataclass(frozen=True)
class Part:
    path: str
    weight: Optional[float] = None
    count: Optional[int] = None

    @property
    def share(self) -> str:
        return f"weight {self.weight:g}" if self.weight is not None else f"count {self.count}"


def parse_mixture(spec: str) -> list[Part]:
    """The parts of a mixture spec; a DataError says what is wrong with a bad one."""
    parts = []
    for entry in (e.strip() for e in str(spec).split(",")):
        if not entry:
            continue
        path, colon, value = entry.rpartition(":")
        if not colon or not path:
            raise DataError(f"--data_mixture {spec!r}: {entry!r} needs a weight or count after ':' "
                            "(e.g. a.json:0.7,b.parquet:0.3 or a.json:2000)")
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"--data_mixture {spec!r}: {value!r} (for {path}) is not a number") from None
        if not number > 0:
            raise DataError(f"--data_mixture {spec!r}: the share of {path} must be above 0, got {value}")
        is_count = value.strip().isdigit()
        parts.append(Part(path, None if is_count else number, int(value) if is_count else None))
    if not parts:
        raise DataError(f"--data_mixture {spec!r}: no sources")
    if len({p.path for p in parts}) != len(parts):
        raise DataError(f"--data_mixture {spec!r}: a source is named twice")
    return parts


def mixture_size(parts: list[Part], sizes: list[int]) -> int:
    """Samples the mixture draws: the weighted sources' sizes together, plus every count."""
    return sum(size for part, size in zip(parts, sizes) if part.weight is not None) + \
        sum(part.count for part in parts if part.count is not None)


def mix(parts: list[Part], sources: list[list], seed: int) -> tuple[list, list[int], list[int]]:
    """Each part's loaded samples joined into one list (each distinct sample once), the part of
    each, and the plan: the positions in that list the mixture draws (a sample may come twice)."""
    offsets = [sum(len(s) for s in sources[:i]) for i in range(len(sources))]
    joined = [sample for source in sources for sample in source]
    part_of = [i for i, source in enumerate(sources) for _ in source]
    plan = [offsets[part] + index for part, index in draw(parts, [len(s) for s in sources], seed)]
    return joined, part_of, plan


def draw(parts: list[Part], sizes: list[int], seed: int) -> list[tuple[int, int]]:
    """(part, index within that part) of every sample of the mixture, part by part."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weighted = [i for i, part in enumerate(parts) if part.weight is not None]
    counts = {i: part.count for i, part in enumerate(parts) if part.count is not None}
    if weighted:
        total = sum(sizes[i] for i in weighted)
        weights = torch.tensor([parts[i].weight for i in weighted], dtype=torch.float64)
        chosen = torch.multinomial(weights, total, replacement=True, generator=generator)
        counted = Counter(chosen.tolist())
        counts.update({i: counted.get(k, 0) for k, i in enumerate(weighted)})
    found = []
    for i in range(len(parts)):
        if sizes[i] == 0 and counts[i]:
            raise DataError(f"--data_mixture: {parts[i].path} has no samples to draw {counts[i]} from")
        order: list[int] = []
        while len(order) < counts[i]:  # a seeded pass over the source, again if it is asked for more
            order += torch.randperm(sizes[i], generator=generator).tolist()
        found += [(i, index) for index in order[:counts[i]]]
    return found
