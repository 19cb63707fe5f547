"""Per-ability scores of several checkpoints from VLMEvalKit result files, normalized across them.

`llava-moslora abilities RESULT_DIR [RESULT_DIR ...] --out DIR` reads each checkpoint's
`*_acc.csv` (multiple choice, TextVQA) and `*_score.csv` (MME, POPE, HallusionBench, yes/no,
MathVista/MMVet) and writes abilities.json, abilities.md and radar_{benchmark}.png (report.py: the
scores on 0-100 and, with several checkpoints, the normalized scores beside them).

Scales: every value is also given as a score on 0-100: fractions (MCQ `_acc.csv`) x 100; MME
subtasks / 200 x 100, perception / 2000 x 100, reasoning / 800 x 100, MME total (perception +
reasoning) / 2800 x 100; files already on 0-100 (yes/no, POPE, HallusionBench, TextVQA) unchanged.

Normalized: normalized = 100 * score / max over the compared checkpoints of that ability's score,
so the best checkpoint gets 100 (if that max is 0, every checkpoint gets 0).

Average (paper style): per checkpoint, the mean over benchmarks of each benchmark's headline score
on 0-100 (MCQ and yes/no: Overall; POPE: the Overall row's F1; MME: (perception + reasoning) / 2800
x 100; HallusionBench: mean of aAcc, fAcc, qAcc), over the benchmarks every checkpoint has.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from .report import (FORMULA, ComparedAbility, ComparedBenchmark, Comparison, ReportFiles, normalize,
                     render_markdown, write_report)
from .result_index import INDEX, indexed_results
from .scores import AbilityScore, BenchmarkScores, CheckpointScores

__all__ = ["AbilitiesError", "AbilityScore", "BenchmarkScores", "CheckpointScores", "ComparedAbility",
           "ComparedBenchmark", "Comparison", "FORMULA", "ReportFiles", "collect_scores", "normalize",
           "benchmark_name", "read_result_dir", "read_result_file", "render_markdown", "write_report",
           "add_arguments", "run"]

log = logging.getLogger(__name__)

# Dataset names the file name is matched against first: model names may hold underscores too.
KNOWN_BENCHMARKS = (
    "MMBench_DEV_EN", "MMBench_DEV_CN", "MMBench_DEV_EN_V11", "MMBench_DEV_CN_V11", "MMBench_TEST_EN",
    "MMBench_TEST_CN", "MMBench_TEST_EN_V11", "MMBench_TEST_CN_V11", "SEEDBench_IMG", "AI2D_TEST",
    "ScienceQA_TEST", "ScienceQA_VAL", "TextVQA_VAL", "MathVista_MINI", "MMVet", "MME", "MMStar", "POPE",
    "HallusionBench", "MMMU_DEV_VAL", "RealWorldQA", "ShapesVQA_MCQ", "ShapesVQA_YN", "ShapesVQA_MCQ_val",
    "ShapesVQA_YN_val")
SUFFIXES = ("_acc.csv", "_score.csv")
PATTERNS = tuple(f"*{suffix}" for suffix in SUFFIXES)
INTERMEDIATE = ("_exact_matching_result", "_auxmatch")  # VLMEvalKit's per-row files, not results
MMB_L2 = ("CP", "FP-S", "FP-C", "AR", "RR", "LR")  # report_acc's abbreviations of MMBench's l2 abilities
SPLIT_PREFERENCE = ("validation", "dev", "none", "test")  # MMMU reports validation; MMBench TEST has no answers
MME_MAX = {"perception": 2000.0, "reasoning": 800.0}
MME_SUBTASK_MAX = 200.0
RUN_ID = re.compile(r"^T\d{8}[-_]")  # run.py's eval_id folders: T%Y%m%d-%H%M%S (legacy T{date}_G{hash})


class AbilitiesError(ValueError):
    """A problem with the command's input that the user must fix (exit code 2 from the CLI)."""


class LayoutError(ValueError):
    """A result file whose columns match none of the layouts VLMEvalKit writes."""


# --- finding result files ---------------------------------------------------------------------

def benchmark_name(stem: str, prefixes: Sequence[str] = ()) -> str:
    """The `{dataset}` of a `{model}_{dataset}` stem (the name without _acc.csv/_score.csv)."""
    at_end = [name for name in KNOWN_BENCHMARKS if stem == name or stem.endswith("_" + name)]
    if at_end:
        return max(at_end, key=len)
    # Judge-scored files put the judge after the dataset: {model}_{dataset}_{judge}_score.csv.
    padded = f"_{stem}_"
    inside = [name for name in KNOWN_BENCHMARKS if f"_{name}_" in padded]
    if inside:
        return max(inside, key=lambda name: (padded.rfind(f"_{name}_"), len(name)))
    for prefix in sorted(set(prefixes), key=len, reverse=True):
        if prefix and stem.startswith(prefix + "_") and len(stem) > len(prefix) + 1:
            return stem[len(prefix) + 1:]
    return stem


def find_result_files(result_dir: Path, label: str) -> dict[str, list[Path]]:
    """benchmark -> result files (symlinks resolved, each once), newest first. Files an
    evaluation index lists (result_index.py) are that benchmark's; others are named by parsing."""
    indexed = indexed_results(result_dir)
    found: dict[Path, str] = dict(indexed)
    for pattern in PATTERNS:
        for path in sorted(result_dir.rglob(pattern)):
            if not path.is_file() or any(tag in path.name for tag in INTERMEDIATE):
                continue
            real = path.resolve()
            if real in found:  # run.py links {model}/X to {model}/T.../X
                continue
            if (path.parent / INDEX).is_file():  # our evaluation's folder: what it scored is indexed
                continue
            stem = path.name[: -len(next(s for s in SUFFIXES if path.name.endswith(s)))]
            # The folders between RESULT_DIR and the file are likely model names (run.py: {work_dir}/{model}/).
            folders = [part for part in path.relative_to(result_dir).parts[:-1] if not RUN_ID.match(part)]
            found[real] = benchmark_name(stem, [label, result_dir.resolve().name, *folders])
    by_benchmark: dict[str, list[Path]] = {}
    for real, benchmark in found.items():
        by_benchmark.setdefault(benchmark, []).append(real)
    for files in by_benchmark.values():
        files.sort(key=lambda p: (p.stat().st_mtime, str(p)), reverse=True)
    return by_benchmark


# --- reading one result file ------------------------------------------------------------------

def _read_table(path: Path):
    import pandas as pd
    # Read as text so names like "none"/"NA" stay names; VLMEvalKit writes missing values as "".
    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=["", "nan", "NaN"])
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: the ability is absent here


def _levels(names: list[str], first: str, second: str, mmbench: bool = False) -> list[str]:
    """VLMEvalKit writes two sorted runs of names (e.g. l2-categories then categories): the
    second starts where the order breaks. With one run the file cannot tell the levels apart."""
    if mmbench and any(name in MMB_L2 for name in names):
        return ["l2-category" if name in MMB_L2 else "category" for name in names]
    breaks = [i for i in range(1, len(names)) if names[i] < names[i - 1]]
    if len(breaks) == 1:
        return [first if i < breaks[0] else second for i in range(len(names))]
    return ["ability"] * len(names)


def _radar(abilities: list[AbilityScore]) -> list[str]:
    l2 = [a.ability for a in abilities if a.level == "l2-category"]
    if len(l2) >= 3:
        return l2
    rest = [a.ability for a in abilities if a.level in ("category", "ability", "subtask")]
    return rest if len(rest) >= 3 else []


def _flat(values: dict[str, Optional[float]], scale: float, order: tuple[str, str], mmbench=False):
    """Overall plus named abilities from one row; absent (NaN) cells are dropped."""
    if values.get("Overall") is None:
        raise LayoutError("no Overall value")
    names = [name for name in values if name != "Overall"]
    abilities = [AbilityScore("Overall", "overall", values["Overall"], values["Overall"] * scale)]
    for name, level in zip(names, _levels(names, *order, mmbench=mmbench)):
        if values[name] is not None:
            abilities.append(AbilityScore(name, level, values[name], values[name] * scale))
    return abilities


def _pick_split(table) -> int:
    splits = [str(s).strip() for s in table["split"]]
    has_overall = [_number(v) is not None for v in table["Overall"]]
    for wanted in SPLIT_PREFERENCE:
        for i, (split, ok) in enumerate(zip(splits, has_overall)):
            if split == wanted and ok:
                return i
    return next((i for i, ok in enumerate(has_overall) if ok), 0)


def _parse_mcq(table):
    row = table.iloc[_pick_split(table)]
    values = {c: _number(row[c]) for c in table.columns if c != "split"}
    return _flat(values, 100.0, ("l2-category", "category"), mmbench=True), "Overall", str(row["split"])


def _parse_mme(table):
    row = table.iloc[0]
    totals = {name: _number(row[name]) for name in MME_MAX}
    if None in totals.values():
        raise LayoutError("MME perception or reasoning is empty")
    total = sum(totals.values())
    abilities = [AbilityScore("Total", "total", total, 100.0 * total / sum(MME_MAX.values()))]
    abilities += [AbilityScore(n, "total", v, 100.0 * v / MME_MAX[n]) for n, v in totals.items()]
    for name in table.columns:
        value = _number(row[name])
        if name not in MME_MAX and value is not None:
            abilities.append(AbilityScore(name, "subtask", value, 100.0 * value / MME_SUBTASK_MAX))
    return abilities, "Total"


def _rows_by_label(table, label_column: str) -> dict[str, dict[str, Optional[float]]]:
    return {str(row[label_column]).strip(): {c: _number(row[c]) for c in table.columns if c != label_column}
            for _, row in table.iterrows()}


def _parse_pope(table):
    rows = _rows_by_label(table, "split")
    if "Overall" not in rows or rows["Overall"]["Overall"] is None:
        raise LayoutError("no Overall row")
    overall = rows.pop("Overall")
    # POPE's `Overall` column is the F1 score.
    metrics = {"F1": overall["Overall"], "acc": overall["acc"], "precision": overall["precision"],
               "recall": overall["recall"]}
    abilities = [AbilityScore(n, "overall" if n == "F1" else "metric", v, v) for n, v in metrics.items()
                 if v is not None]
    for category, values in sorted(rows.items()):
        for metric, column in (("F1", "Overall"), ("acc", "acc")):
            if values[column] is not None:
                abilities.append(AbilityScore(f"{category} {metric}", "category", values[column], values[column]))
    radar = [a.ability for a in abilities if a.level == "category" and a.ability.endswith(" F1")]
    return abilities, "F1", radar if len(radar) >= 3 else []


def _parse_hallusion(table):
    rows = _rows_by_label(table, "split")
    metrics = ("aAcc", "fAcc", "qAcc")
    overall = rows.pop("Overall", None)
    if overall is None or any(overall[m] is None for m in metrics):
        raise LayoutError("no complete Overall row")
    mean = sum(overall[m] for m in metrics) / 3  # the leaderboard's HallusionBench score
    abilities = [AbilityScore("Overall", "overall", mean, mean)]
    abilities += [AbilityScore(m, "metric", overall[m], overall[m]) for m in metrics]
    for name, values in rows.items():
        if values["aAcc"] is not None:
            abilities.append(AbilityScore(f"{name} aAcc", "category", values["aAcc"], values["aAcc"]))
    return abilities, "Overall", list(metrics)


def _parse_table(table):
    """MathVista/MMVet: a label column (Task&Skill, Category) and `acc` on 0-100, with an Overall row."""
    label_column = table.columns[0]
    rows = _rows_by_label(table, label_column)
    if rows.get("Overall", {}).get("acc") is None:
        raise LayoutError("no Overall row with acc")
    abilities = [AbilityScore("Overall", "overall", rows["Overall"]["acc"], rows["Overall"]["acc"])]
    abilities += [AbilityScore(name, "category", values["acc"], values["acc"]) for name, values in rows.items()
                  if name != "Overall" and values["acc"] is not None]
    return abilities


def read_result_file(path: Union[str, Path], benchmark: Optional[str] = None) -> BenchmarkScores:
    """One VLMEvalKit `_acc.csv`/`_score.csv`, recognised by its columns; LayoutError if unknown."""
    path = Path(path)
    benchmark = benchmark or benchmark_name(re.sub(r"_(acc|score)\.csv$", "", path.name))
    table = _read_table(path)
    columns, split, radar = set(table.columns), None, None
    if table.empty:
        raise LayoutError("no rows")
    if path.name.endswith("_acc.csv") and {"split", "Overall"} <= columns:
        kind, (abilities, headline, split) = "mcq", _parse_mcq(table)
    elif {"perception", "reasoning"} <= columns:
        kind, (abilities, headline) = "mme", _parse_mme(table)
    elif {"split", "Overall", "acc", "precision", "recall"} <= columns:
        kind, (abilities, headline, radar) = "pope", _parse_pope(table)
    elif {"split", "aAcc", "fAcc", "qAcc"} <= columns:
        kind, (abilities, headline, radar) = "hallusion", _parse_hallusion(table)
    elif "Overall" in columns and len(table) == 1:  # yes/no default_rating, TextVQA: one row on 0-100
        values = {c: _number(table.iloc[0][c]) for c in table.columns}
        kind = "yes_no" if path.name.endswith("_score.csv") else "vqa"
        abilities, headline = _flat(values, 1.0, ("category", "l2-category")), "Overall"
    elif "acc" in columns and "Overall" in set(table[table.columns[0]].astype(str).str.strip()):
        kind, abilities, headline = "vqa", _parse_table(table), "Overall"
    else:
        raise LayoutError(f"unknown layout (columns: {', '.join(table.columns)})")
    return BenchmarkScores(benchmark, kind, path.resolve(), abilities, headline,
                           _radar(abilities) if radar is None else radar, split)


# --- several checkpoints ----------------------------------------------------------------------

def read_result_dir(result_dir: Path, label: str) -> CheckpointScores:
    """A checkpoint's newest readable result per benchmark; unreadable files are warned about and skipped."""
    checkpoint = CheckpointScores(label, Path(result_dir), {})
    for benchmark, files in sorted(find_result_files(Path(result_dir), label).items()):
        for path in files:
            try:
                scores = read_result_file(path, benchmark)
            except (LayoutError, OSError, UnicodeDecodeError, ValueError) as error:
                message = f"{label}: skipped {path}: {error}"
                log.warning(message)
                checkpoint.warnings.append(message)
                continue
            scores.others = [other for other in files if other != path]
            checkpoint.benchmarks[benchmark] = scores
            break
    return checkpoint


def resolve_labels(result_dirs: Sequence[Path], labels: Union[None, str, Sequence[str]]) -> list[str]:
    if labels is None:
        labels = [d.name or d.resolve().name for d in result_dirs]
    elif isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",")]
    labels = list(labels)
    if len(labels) != len(result_dirs):
        raise AbilitiesError(f"--labels has {len(labels)} name(s) ({', '.join(labels)}) for {len(result_dirs)} "
                             f"RESULT_DIR(s); give one comma-separated label per directory")
    if not all(labels) or len(set(labels)) != len(labels):
        raise AbilitiesError(f"checkpoint labels must be unique and non-empty, got: {', '.join(labels)} "
                             f"(pass --labels a,b,...)")
    return labels


def collect_scores(result_dirs: Sequence[Union[str, Path]],
                   labels: Union[None, str, Sequence[str]] = None) -> list[CheckpointScores]:
    """Scores of each RESULT_DIR (one checkpoint each); AbilitiesError names dirs that are missing or empty."""
    dirs = [Path(d) for d in result_dirs]
    if not dirs:
        raise AbilitiesError("no RESULT_DIR given")
    labels = resolve_labels(dirs, labels)
    missing = [str(d) for d in dirs if not d.is_dir()]
    checkpoints = [read_result_dir(d, label) for d, label in zip(dirs, labels) if d.is_dir()]
    empty = [str(c.result_dir) for c in checkpoints if not c.benchmarks]
    problems = []
    if missing:
        problems.append(f"not a directory: {', '.join(missing)}")
    if empty:
        problems.append(f"no readable VLMEvalKit result file ({', '.join(PATTERNS)}, searched recursively; "
                        f"skipping *{'*, *'.join(INTERMEDIATE)}*) in: {', '.join(empty)}")
    if problems:
        raise AbilitiesError("; ".join(problems))
    return checkpoints


# --- command line -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, name: str = "abilities") -> None:
    parser.add_argument("result_dirs", nargs="+", metavar="RESULT_DIR",
                        help="one checkpoint's evaluation work directory, searched recursively for "
                             "VLMEvalKit *_acc.csv and *_score.csv (the newest copy of each benchmark is used)")
    parser.add_argument("--out", required=True,
                        help="writes abilities.json, abilities.md and radar_{benchmark}.png (for benchmarks with "
                             ">= 3 abilities: scores on 0-100 and, with several checkpoints, beside them the "
                             "normalized scores, 100 = the best compared checkpoint on each ability)")
    parser.add_argument("--labels", default=None,
                        help="comma-separated checkpoint names, one per RESULT_DIR (default: the directory names)")
    parser.add_argument("--no_plot", "--no-plot", dest="no_plot", action="store_true",
                        help="skip the radar plots (matplotlib is then not needed)")


def run(args: argparse.Namespace, name: str = "abilities") -> int:
    try:
        checkpoints = collect_scores(args.result_dirs, args.labels)
    except AbilitiesError as error:
        print(f"llava-moslora {name}: error: {error}", file=sys.stderr)
        return 2
    comparison = normalize(checkpoints)
    files = write_report(comparison, args.out, plots=not args.no_plot)
    print(render_markdown(comparison))
    written = [files.json, files.markdown, *files.plots]
    print(f"written: {', '.join(str(p) for p in written)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llava_moslora.evaluation.abilities",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
