"""The scores read from result files: one ability, one benchmark, one checkpoint.

Both the reader (abilities.py) and the comparison and its report (report.py) use these types;
they live here so that neither imports the other's module for them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class AbilityScore:
    ability: str
    level: str  # overall | l2-category | category | ability (levels not told apart) | total | subtask | metric
    raw: float  # as in the file (MME total: perception + reasoning)
    score: float  # on 0-100


@dataclass
class BenchmarkScores:
    benchmark: str
    kind: str  # mcq | yes_no | mme | pope | hallusion | vqa
    source: Path  # the file used (symlinks resolved)
    abilities: list[AbilityScore]
    headline: str  # name of the ability that stands for the whole benchmark
    radar: list[str]  # abilities for the radar plot (empty: fewer than 3)
    split: Optional[str] = None  # the `_acc.csv` row used
    others: list[Path] = field(default_factory=list)  # older copies of the same result, not used

    def get(self, ability: str) -> Optional[AbilityScore]:
        return next((a for a in self.abilities if a.ability == ability), None)

    @property
    def headline_score(self) -> float:
        return self.get(self.headline).score


@dataclass
class CheckpointScores:
    label: str
    result_dir: Path
    benchmarks: dict[str, BenchmarkScores]
    warnings: list[str] = field(default_factory=list)
