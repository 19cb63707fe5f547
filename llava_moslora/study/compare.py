"""Paired comparisons of two variants of one budget: the difference on a score (one ability of a
benchmark, or the overall mean of the benchmarks' headline scores), paired by seed and by test
question, with its 95% interval and minimum detectable effect, and a sentence that says what it
shows and no more.

Over seeds and questions (stats.crossed_difference) where every run has per-question outcomes
(questions.py); over seeds only (Student's t) where it does not, and the method is named.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .questions import paired_block
from .stats import CrossedDifference, PairedDifference, crossed_difference, paired_difference

OVERALL = "overall"
BOTH = "seeds and questions"
SEEDS = "seeds"


@dataclass
class Difference:
    variant: str
    reference: str
    metric: str  # "overall" or "benchmark: ability"
    value: Union[CrossedDifference, PairedDifference]
    method: str  # BOTH or SEEDS

    @property
    def interval(self) -> Optional[tuple[float, float]]:
        return None if self.value.low is None else (self.value.low, self.value.high)

    def text(self) -> str:
        if isinstance(self.value, CrossedDifference):
            return self.value.text()
        mde = f", MDE {self.value.mde:.1f} (seeds only)" if self.value.mde is not None else ""
        return self.value.text() + mde

    def plain(self) -> dict:
        value = self.value
        numbers = {"mean": value.mean, "low": value.low, "high": value.high, "mde": value.mde,
                   "includes_zero": value.includes_zero, "method": self.method}
        if isinstance(value, CrossedDifference):
            numbers.update(df=value.df, seeds=value.seeds, questions=value.questions, seed_share=value.seed_share,
                           standard_error=value.standard_error)
        else:
            numbers.update(seeds=value.n)
        return numbers


def metric_name(benchmark: Optional[str], ability: Optional[str]) -> str:
    return OVERALL if benchmark is None else f"{benchmark}: {ability}"


def compare(variant_runs: list, reference_runs: list, benchmark: Optional[str] = None,
            ability: Optional[str] = None) -> Difference:
    """variant minus reference on benchmark/ability (both None: the overall mean of headlines),
    over the seeds both have. Runs are report.FinishedRun."""
    by_seed = {r.seed: r for r in reference_runs}
    variant_runs = sorted((r for r in variant_runs if r.seed in by_seed), key=lambda r: r.seed)
    if not variant_runs:
        raise ValueError("no seed in common")
    reference_runs = [by_seed[r.seed] for r in variant_runs]
    name = metric_name(benchmark, ability)
    labels = (variant_runs[0].variant, reference_runs[0].variant)
    if len(variant_runs) >= 2:
        if benchmark is None:
            names = sorted(set.intersection(*(set(r.scores.benchmarks) for r in variant_runs + reference_runs)))
            keys = [(b, variant_runs[0].scores.benchmarks[b].headline) for b in names]
        else:
            keys = [(benchmark, ability)]
        blocks = [paired_block([r.outcomes for r in variant_runs], [r.outcomes for r in reference_runs], b, a)
                  for b, a in keys]
        if blocks and all(block is not None for block in blocks):
            return Difference(*labels, name, crossed_difference(blocks), BOTH)
    return Difference(*labels, name, paired_difference([score(r, benchmark, ability) for r in variant_runs],
                                                       [score(r, benchmark, ability) for r in reference_runs]), SEEDS)


def score(run, benchmark: Optional[str], ability: Optional[str]) -> float:
    return run.average if benchmark is None else run.scores.benchmarks[benchmark].get(ability).score


def sentence(differences: list[Difference]) -> str:
    """One sentence on a comparison from its differences on the headline scores (overall first)."""
    first = differences[0]
    who = f"{first.variant} vs {first.reference}"
    shown = [d for d in differences if d.interval is not None and not d.value.includes_zero]
    if all(d.interval is None for d in differences):
        return f"{who}: one seed, so no interval; run more seeds to compare."
    if not shown:
        power = ", ".join(f"{d.metric} {d.value.mean:+.1f} (MDE {d.value.mde:.1f})" for d in differences)
        return (f"{who}: no difference shown; every interval includes 0 ({power}; an effect the size of the "
                "MDE would have been detected 4 times in 5).")
    parts = [f"{'higher' if d.value.mean > 0 else 'lower'} on {d.metric} by {abs(d.value.mean):.1f} points "
             f"[{d.value.low:+.1f}, {d.value.high:+.1f}]" for d in shown]
    rest = [d.metric for d in differences if d not in shown]
    tail = f"; {', '.join(rest)}: interval includes 0" if rest else ""
    return f"{who}: {first.variant} is {' and '.join(parts)}{tail}."
