"""Comparing checkpoints' ability scores (abilities.py reads them) and writing the comparison.

normalize(): per (benchmark, ability), normalized = 100 * score / max over the compared checkpoints,
plus the paper-style average; write_report(): abilities.json, abilities.md and radar_{benchmark}.png.

radar_{benchmark}.png (radar_figure()): with several checkpoints, two panels side by side, the scores
on 0-100 (left) and the normalized scores (right, titled with what 100 means and where the radius
starts when not at 0); with one checkpoint, one panel on 0-100. Up to three checkpoints get light
fills, more are outlines only, each with its own colour, line style and marker, in one shared
legend. Ability names are anchored outside the circle and the ring values (20 ... 100) run along a
gap between two abilities, checked once drawn not to touch a name, for 3 to about 20 abilities.
matplotlib is imported only when a plot is drawn, through its Agg canvas (no GUI, no pyplot state).
"""
from __future__ import annotations

import json
import math
import re
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


RAW_TITLE = "score on 0-100"
NORMALIZED_TITLE = "normalized: 100 = the best compared checkpoint on each ability"
FILLED_UP_TO = 3  # series drawn with a light fill; with more, outlines only (fills would stack to mud)
# (line style, marker) per series, cycled with the colours C0..C9, so outlines stay apart in grey too.
SERIES_STYLES = (("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ((0, (6, 2, 1, 2, 1, 2)), "v"),
                 ((0, (1, 1)), "P"), ((0, (8, 3)), "X"))


def wrap_name(name: str, width: int) -> str:
    """Lines of at most `width` characters (a longer piece keeps its own line), broken at spaces
    and after hyphens and underscores (VLMEvalKit's category names are snake_case)."""
    lines, line = [], ""
    for word in name.split():
        for i, piece in enumerate(re.findall(r"[^_-]+[_-]*|[_-]+", word)):
            joined = line + ("" if i else " ") + piece if line else piece
            if line and len(joined) > width:
                lines.append(line)
                line = piece
            else:
                line = joined
    return "\n".join(lines + ([line] if line else []))


def _radar_layout(count: int) -> tuple[int, float, float]:
    """(wrap width in characters, ability font size, panel size in inches) for `count` abilities:
    more abilities get narrower, smaller names on a larger panel, so neighbours do not touch."""
    if count <= 8:
        return 18, 8.5, 5.4
    if count <= 14:
        return 15, 7.5, 6.0
    return 13, 7.5, 6.8 + 0.3 * max(0, count - 16)


def _outward(text, angle: float) -> None:
    """Anchor an ability name at its inner side, so it grows away from the circle, never into it."""
    cos, sin = math.cos(angle), math.sin(angle)
    text.set_horizontalalignment("left" if cos > 0.2 else "right" if cos < -0.2 else "center")
    text.set_verticalalignment("bottom" if sin > 0.2 else "top" if sin < -0.2 else "center")


def _tick_labels(figure) -> list[tuple[str, object]]:
    """("radial" | "angular", text) for every shown tick label of the figure's polar panels."""
    return [(kind, text) for axes in figure.axes for kind, axis in (("radial", axes.yaxis), ("angular", axes.xaxis))
            for text in axis.get_ticklabels() if text.get_visible() and text.get_text().strip()]


def _radial_clashes(figure) -> list:
    """The ring-value labels that come within 3 pixels of an ability name, once laid out and drawn."""
    figure.draw_without_rendering()
    renderer = figure.canvas.get_renderer()
    boxes = [(kind, text, text.get_window_extent(renderer)) for kind, text in _tick_labels(figure)]
    names = [box for kind, _, box in boxes if kind == "angular"]
    return [text for kind, text, box in boxes
            if kind == "radial" and any(box.padded(3).overlaps(name) for name in names)]


def _place_radial_labels(figure, count: int) -> None:
    """The ring values go along the middle of a gap between two abilities: the gap nearest 67.5
    degrees (upper right) where they touch no ability name once drawn; failing that, the gap with
    the fewest clashes, where the clashing values are left out (the rings and the title remain)."""
    gaps = sorted((360.0 * (i + 0.5) / count for i in range(count)), key=lambda a: abs(a - 67.5))
    fewest = None
    for angle in gaps:
        for axes in figure.axes:
            axes.set_rlabel_position(angle)
        clashes = len(_radial_clashes(figure))
        if clashes == 0:
            return
        if fewest is None or clashes < fewest[0]:
            fewest = (clashes, angle)
    for axes in figure.axes:
        axes.set_rlabel_position(fewest[1])
    for text in _radial_clashes(figure):
        text.set_visible(False)


def radar_figure(bench: ComparedBenchmark, labels: list[str]):
    """The radar of one benchmark as a matplotlib Figure (Agg canvas), one polygon per checkpoint
    over its radar abilities. Several checkpoints: two panels, the scores on 0-100 (left) and the
    normalized scores (right; 100 = the best compared checkpoint on each ability, the radius
    starting below the lowest value); one checkpoint: one panel on 0-100 (normalized would all be
    100). Up to FILLED_UP_TO checkpoints get light fills, more are outlines only; each checkpoint has
    its own colour, line style and marker, and the panels share one legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    by_name = {a.ability: a for a in bench.abilities}
    names = bench.radar
    labels = [label for label in labels if label in bench.sources]  # checkpoints that ran this benchmark
    panels = [("score", RAW_TITLE, 0)]
    if len(labels) > 1:
        lowest = min(by_name[n].normalized[label] for n in names for label in labels)
        # Start the radius below the lowest value so close checkpoints stay apart; the title says where.
        floor = max(0, 10 * math.floor((lowest - 10) / 10))
        panels.append(("normalized", NORMALIZED_TITLE + (f"\n(radius starts at {floor}, not 0)" if floor else ""),
                       floor))
    width, fontsize, size = _radar_layout(len(names))
    figure = Figure(figsize=(size * len(panels) + 0.4, size + 0.4), layout="constrained")
    figure.get_layout_engine().set(w_pad=0.1, h_pad=0.1)  # inches between panels, names and legend
    FigureCanvasAgg(figure)
    angles = [2 * math.pi * i / len(names) for i in range(len(names))]
    closed = angles + angles[:1]
    for column, (attribute, title, floor) in enumerate(panels, 1):
        axes = figure.add_subplot(1, len(panels), column, projection="polar")
        for i, label in enumerate(labels):
            values = [getattr(by_name[n], attribute)[label] for n in names]
            linestyle, marker = SERIES_STYLES[i % len(SERIES_STYLES)]
            axes.plot(closed, values + values[:1], color=f"C{i % 10}", linestyle=linestyle, linewidth=1.6,
                      marker=marker, markersize=4, label=label)
            if len(labels) <= FILLED_UP_TO:
                axes.fill(closed, values + values[:1], color=f"C{i % 10}", alpha=0.1, linewidth=0)
        axes.set_ylim(floor, 100)
        span = 100 - floor
        step = 20 if span > 60 else 10 if span > 30 else 5 if span > 10 else 2  # 4 to 6 rings
        axes.set_yticks(list(range(100, floor, -step))[::-1])
        axes.tick_params(axis="y", labelsize=7.5, labelcolor="0.3")
        for text in axes.get_yticklabels():  # legible where a polygon crosses the ring values
            text.set_bbox({"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.75})
        axes.set_xticks(angles)
        axes.set_xticklabels([wrap_name(n, width) for n in names], fontsize=fontsize)
        axes.tick_params(axis="x", pad=-2)  # names are anchored at their inner side (_outward)
        for angle, text in zip(angles, axes.get_xticklabels()):
            _outward(text, angle)
        axes.set_title(title, fontsize=10, pad=10)
    figure.suptitle(bench.benchmark, fontsize=12)
    handles, shown = figure.axes[0].get_legend_handles_labels()
    figure.legend(handles, shown, loc="outside lower center", ncol=min(len(labels), 5), fontsize=9,
                  frameon=False)
    _place_radial_labels(figure, len(names))
    return figure


def plot_radar(bench: ComparedBenchmark, labels: list[str], path: Path) -> Path:
    """radar_figure() saved as a PNG at `path`."""
    radar_figure(bench, labels).savefig(path, dpi=110)
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
