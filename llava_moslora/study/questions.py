"""Which test questions an evaluated run answered right, read back from its prediction files.

The report pairs these across variants (same seed, same question) for intervals over seeds and
questions (stats.crossed_difference). Answers are scored again with the evaluation's own
matching rules (builtin.parse_choice / parse_yes_no, which follow VLMEvalKit's), and every
ability's mean over its questions must equal the score in the run's result file; a benchmark
where it does not (another scoring rule: circular evaluation, MME's acc+, a judge) has no
per-question outcomes, and the report falls back to the interval over seeds for it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.builtin import parse_choice, parse_yes_no
from ..evaluation.scores import BenchmarkScores, CheckpointScores

SCORED_KINDS = ("mcq", "yes_no")
# Scores in result files are fractions or 0-100 floats written in full; a mean of 0/1 outcomes
# must match to rounding.
TOLERANCE = 1e-6


@dataclass
class QuestionOutcomes:
    """Per benchmark and ability: 0/1 per question (pandas Series indexed by the row's `index`)."""

    hits: dict[str, dict[str, pd.Series]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # benchmark -> why it has none

    def get(self, benchmark: str, ability: str):
        return self.hits.get(benchmark, {}).get(ability)


def predictions_of(scores: BenchmarkScores) -> Path:
    """The prediction file beside a result file: X_acc.csv / X_score.csv -> X.xlsx."""
    return scores.source.with_name(re.sub(r"_(acc|score)\.csv$", ".xlsx", scores.source.name))


def _hits(rows: pd.DataFrame, kind: str) -> pd.Series:
    predictions = rows["prediction"].fillna("").astype(str)
    if kind == "mcq":
        right = [parse_choice(p, row) == str(row["answer"]).strip() for p, (_, row) in zip(predictions, rows.iterrows())]
    else:
        right = [parse_yes_no(p) == str(a).strip() for p, a in zip(predictions, rows["answer"])]
    return pd.Series(np.asarray(right, dtype=np.float64), index=rows["index"].to_numpy())


def benchmark_outcomes(scores: BenchmarkScores) -> dict[str, pd.Series]:
    """0/1 per question for every ability of one benchmark; ValueError saying why when its
    scores cannot be rebuilt from per-question outcomes."""
    if scores.kind not in SCORED_KINDS:
        raise ValueError(f"{scores.kind} scores are not means of right/wrong answers")
    path = predictions_of(scores)
    if not path.is_file():
        raise ValueError(f"no prediction file {path.name}")
    rows = pd.read_excel(path)
    if not {"index", "prediction", "answer"} <= set(rows.columns):
        raise ValueError(f"{path.name} lacks index/prediction/answer columns")
    if scores.split is not None and "split" in rows:
        rows = rows[rows["split"].astype(str) == str(scores.split)]
    hits = _hits(rows, scores.kind)
    if hits.index.duplicated().any():
        raise ValueError(f"{path.name} repeats row indices (circular evaluation?)")
    outcomes = {}
    for ability in scores.abilities:
        if ability.ability == scores.headline:
            chosen = hits
        else:
            column = next((c for c in ("category", "l2-category") if c in rows
                           and (rows[c].astype(str) == ability.ability).any()), None)
            if column is None:
                continue  # an ability these rows do not name: no per-question outcomes for it
            chosen = hits[(rows[column].astype(str) == ability.ability).to_numpy()]
        if abs(100.0 * chosen.mean() - ability.score) > TOLERANCE * 100:
            raise ValueError(f"{ability.ability}: {100 * chosen.mean():.4f} from the answers, {ability.score:.4f} "
                             "in the result file (another scoring rule)")
        outcomes[ability.ability] = chosen
    return outcomes


def read_outcomes(scores: CheckpointScores) -> QuestionOutcomes:
    """Per-question outcomes of every benchmark of a run's scores (those that have them)."""
    found = QuestionOutcomes()
    for name, benchmark in scores.benchmarks.items():
        try:
            found.hits[name] = benchmark_outcomes(benchmark)
        except (ValueError, OSError, KeyError) as error:
            found.missing[name] = str(error)
    return found


def paired_block(variant: list[QuestionOutcomes], reference: list[QuestionOutcomes], benchmark: str,
                 ability: str):
    """S x Q array of variant-minus-reference outcomes on the questions every run has (runs are
    paired by position: the same seed), or None when a run lacks them."""
    series = [o.get(benchmark, ability) for o in variant + reference]
    if any(s is None for s in series):
        return None
    shared = series[0].index
    for s in series[1:]:
        shared = shared.intersection(s.index)
    if len(shared) < 2:
        return None
    half = len(variant)
    values = np.stack([s.loc[shared].to_numpy() for s in series])
    return values[:half] - values[half:]
