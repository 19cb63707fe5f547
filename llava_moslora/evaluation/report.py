"""Comparing checkpoints' ability scores (abilities.py reads them) and writing the comparison.

normalize(): per (benchmark, ability), normalized = 100 * score / max over the compared checkpoints,
plus the paper-style average; write_report(): abilities.json, abilities.md and radar_{benchmark}.png.
matplotlib is imported only when a plot is drawn, through its Agg canvas (no GUI, no pyplot state).
"""
from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence, Union

from .scores import CheckpointScores

FORMULA = ("Score: each value on 0-100 (fractions x 100; MME subtasks / 200 x 100, perception / 2000 x 100, "
           "reasoning / 800 x 100, total (perception + reasoning) / 2800 x 100; files already on 0-100 unchanged). "
           "Normalized: normalized = 100 * score / max over the compared checkpoints of that ability's score "
           "(best checkpoint = 100; if the max is 0, all get 0).")
AVERAGE_RULE = ("Mean over benchmarks of each benchmark's headline score on 0-100 "
                "(MCQ and yes/no: Overall; POPE: F1 of the Overall row; MME: (perception + reasoning) / 2800 x 100; "
                "HallusionBench: mean of aAcc, fAcc, qAcc), only over the benchmarks every checkpoint has.")


@dataclass
class ReportFiles:
    json: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)


@dataclass
class ComparedAbility:
    ability: str
    level: str
    raw: dict[str, float]  # label -> value; a checkpoint without the ability is absent
    score: dict[str, float]
    normalized: dict[str, float]


@dataclass
class ComparedBenchmark:
    benchmark: str
    kind: str
    headline: str
    radar: list[str]  # abilities every checkpoint has, when there are at least 3
    abilities: list[ComparedAbility]
    sources: dict[str, dict]  # label -> {"file", "split", "others"}


@dataclass
class Comparison:
    labels: list[str]
    benchmarks: list[ComparedBenchmark]
    average: dict[str, float]  # label -> paper-style average (empty when no benchmark is shared)
    average_normalized: dict[str, float]
    averaged: list[str]  # benchmarks in the average
    left_out: dict[str, list[str]]  # benchmark -> labels of the checkpoints that lack it
    warnings: list[str] = field(default_factory=list)


def _normalized(scores: dict[str, float]) -> dict[str, float]:
    best = max(scores.values(), default=0.0)
    return {label: (100.0 * s / best if best > 0 else 0.0) for label, s in scores.items()}


def _compare(benchmark: str, present: list[CheckpointScores]) -> ComparedBenchmark:
    first = present[0].benchmarks[benchmark]
    names: list[str] = []
    for checkpoint in present:  # keep the files' order: a name one file lacks goes after its predecessor
        previous = None
        for ability in (a.ability for a in checkpoint.benchmarks[benchmark].abilities):
            if ability not in names:
                names.insert(names.index(previous) + 1 if previous is not None else 0, ability)
            previous = ability
    abilities = []
    for name in names:
        found = {c.label: c.benchmarks[benchmark].get(name) for c in present}
        found = {label: a for label, a in found.items() if a is not None}
        level = next(iter(found.values())).level
        scores = {label: a.score for label, a in found.items()}
        abilities.append(ComparedAbility(name, level, {label: a.raw for label, a in found.items()}, scores,
                                         _normalized(scores)))
    shared = {a.ability for a in abilities if len(a.score) == len(present)}
    radar = [name for name in first.radar if name in shared]
    sources = {c.label: {"file": str(c.benchmarks[benchmark].source), "split": c.benchmarks[benchmark].split,
                         "others": [str(p) for p in c.benchmarks[benchmark].others]} for c in present}
    return ComparedBenchmark(benchmark, first.kind, first.headline, radar if len(radar) >= 3 else [],
                             abilities, sources)


def normalize(checkpoints: Sequence[CheckpointScores]) -> Comparison:
    """Per (benchmark, ability): 0-100 scores side by side and normalized = 100 * score / best."""
    labels = [c.label for c in checkpoints]
    names = sorted({b for c in checkpoints for b in c.benchmarks})
    benchmarks = [_compare(b, [c for c in checkpoints if b in c.benchmarks]) for b in names]
    left_out = {b: [c.label for c in checkpoints if b not in c.benchmarks] for b in names}
    left_out = {b: missing for b, missing in left_out.items() if missing}
    averaged = [b for b in names if b not in left_out]
    average = {}
    if averaged:
        average = {c.label: sum(c.benchmarks[b].headline_score for b in averaged) / len(averaged)
                   for c in checkpoints}
    warnings = [w for c in checkpoints for w in c.warnings]
    return Comparison(labels, benchmarks, average, _normalized(average), averaged, left_out, warnings)


def _cell(scores: dict, normalized: dict, label: str) -> str:
    if label not in scores:
        return "-"
    return f"{scores[label]:.1f} ({normalized[label]:.1f})"


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _average_section(comparison: Comparison) -> list[str]:
    lines = ["## Average (paper style)", "", AVERAGE_RULE, ""]
    for benchmark, missing in comparison.left_out.items():
        lines.append(f"- left out: {benchmark} (missing for {', '.join(missing)})")
    if not comparison.averaged:
        return lines + ["", "No benchmark is shared by every checkpoint: no average.", ""]
    headlines = {b.benchmark: b for b in comparison.benchmarks}
    rows = []
    for name in comparison.averaged:
        bench = headlines[name]
        ability = next(a for a in bench.abilities if a.ability == bench.headline)
        rows.append([name, bench.headline] + [_cell(ability.score, ability.normalized, label)
                                              for label in comparison.labels])
    rows.append(["**average**", f"{len(comparison.averaged)} benchmarks"]
                + [_cell(comparison.average, comparison.average_normalized, label) for label in comparison.labels])
    if comparison.left_out:
        lines.append("")
    return lines + markdown_table(["benchmark", "headline", *comparison.labels], rows) + [""]


def _benchmark_section(bench: ComparedBenchmark, labels: list[str]) -> list[str]:
    lines = [f"## {bench.benchmark} ({bench.kind}; headline: {bench.headline})", ""]
    for label, source in bench.sources.items():
        split = f", split {source['split']}" if source["split"] else ""
        others = f"; newest of {len(source['others']) + 1} copies" if source["others"] else ""
        lines.append(f"- {label}: `{source['file']}`{split}{others}")
    rows = [[a.ability, a.level] + [_cell(a.score, a.normalized, label) for label in labels]
            for a in bench.abilities]
    return lines + [""] + markdown_table(["ability", "level", *labels], rows) + [""]


def render_markdown(comparison: Comparison) -> str:
    """abilities.md: the average table, then one table per benchmark of "score (normalized)"."""
    lines = [f"# Per-ability scores: {' vs '.join(comparison.labels)}", "",
             "Each cell: score (normalized). " + FORMULA, ""]
    lines += _average_section(comparison)
    for bench in comparison.benchmarks:
        lines += _benchmark_section(bench, comparison.labels)
    if comparison.warnings:
        lines += ["## Warnings", "", *(f"- {w}" for w in comparison.warnings), ""]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def comparison_dict(comparison: Comparison) -> dict:
    return {"formula": FORMULA, "average_rule": AVERAGE_RULE, **_jsonable(asdict(comparison))}


def plot_file_name(benchmark: str) -> str:
    return "radar_" + re.sub(r"[^A-Za-z0-9._-]+", "_", benchmark) + ".png"


def plot_radar(bench: ComparedBenchmark, labels: list[str], path: Path) -> Path:
    """One polygon per checkpoint over the benchmark's radar abilities: normalized scores when
    checkpoints are compared, scores on 0-100 for a single one (normalized would all be 100)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_name = {a.ability: a for a in bench.abilities}
    names = bench.radar
    labels = [label for label in labels if label in bench.sources]  # checkpoints that ran this benchmark
    compared = len(labels) > 1
    value = (lambda n, label: by_name[n].normalized[label]) if compared else (lambda n, label: by_name[n].score[label])
    angles = [2 * math.pi * i / len(names) for i in range(len(names))]
    lowest = min(value(n, label) for n in names for label in labels)
    # Start the radius below the lowest value so close checkpoints stay apart; the title says where.
    floor = max(0, 10 * math.floor((lowest - 10) / 10)) if compared else 0
    figure = Figure(figsize=(7, 7))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(projection="polar")
    for label in labels:
        values = [value(n, label) for n in names]
        axes.plot(angles + angles[:1], values + values[:1], linewidth=1.5, label=label)
        axes.fill(angles + angles[:1], values + values[:1], alpha=0.08)
    axes.set_xticks(angles)
    axes.set_xticklabels([textwrap.fill(n, 18) for n in names], fontsize=8)
    axes.set_ylim(floor, 100)
    title = (f"normalized score (best checkpoint = 100; radius from {floor})" if compared
             else "score on 0-100")
    axes.set_title(f"{bench.benchmark}: {title}", fontsize=10, pad=24)
    axes.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), fontsize=8)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def write_report(comparison: Comparison, out_dir: Union[str, Path], plots: bool = True) -> ReportFiles:
    """abilities.json, abilities.md and, with plots, radar_{benchmark}.png for benchmarks with >= 3 abilities."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(out / "abilities.json", out / "abilities.md")
    files.json.write_text(json.dumps(comparison_dict(comparison), indent=2) + "\n")
    files.markdown.write_text(render_markdown(comparison) + "\n")
    if plots:
        files.plots = [plot_radar(b, comparison.labels, out / plot_file_name(b.benchmark))
                       for b in comparison.benchmarks if len(b.radar) >= 3]
    return files
