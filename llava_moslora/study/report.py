"""The study's report, a section per budget: per-ability scores of every variant (mean over
seeds, normalized across variants, radar), one table of costs and scores with paired differences
to the reference variant (intervals over seeds and questions, minimum detectable effects,
compare.py), a sentence per comparison, the learning-rate search with rates chosen at an edge of
their grid flagged; then the fairness checks and the loss curves.

Writes under <out>/report/: study.md, study.json, and per budget (with several budgets, each
name below gets a _<budget> suffix) abilities/ (mean over seeds: abilities.md, abilities.json,
radar_*.png: scores and normalized scores, one polygon per variant), abilities_all/ (every final run)
and loss_curves.png.
Scores are read back from the evaluation files, as `llava-moslora abilities` does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..evaluation.abilities import AbilityScore, BenchmarkScores, CheckpointScores
from ..evaluation.report import markdown_table, normalize, write_report
from ..train.metrics import METRICS_FILE
from .budget import Allocation
from .compare import Difference, compare, score, sentence
from .questions import QuestionOutcomes, read_outcomes
from .stats import Summary, summarize

GIB = 1024 ** 3


@dataclass
class FinishedRun:
    variant: str
    seed: int
    lr: float
    folder: Path
    record: dict  # run.json
    metrics: dict  # train_metrics.json
    scores: CheckpointScores  # test split (validation for a search run)
    budget: str = ""  # the budget's name
    _outcomes: Optional[QuestionOutcomes] = None

    @property
    def outcomes(self) -> QuestionOutcomes:
        """Which test questions this run answered right (read once, from its prediction files)."""
        if self._outcomes is None:
            self._outcomes = read_outcomes(self.scores)
        return self._outcomes

    @property
    def average(self) -> float:
        """Paper-style average: mean of the benchmarks' headline scores (0-100)."""
        benchmarks = self.scores.benchmarks.values()
        return sum(b.headline_score for b in benchmarks) / len(benchmarks)

    def losses(self) -> dict[int, float]:
        state = json.loads((self.folder / "model" / "trainer_state.json").read_text())
        return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def load_finished(run, folder: Path, record: dict, scores: CheckpointScores, budget: str = "") -> FinishedRun:
    metrics = json.loads((folder / "model" / METRICS_FILE).read_text())
    return FinishedRun(run.variant, run.seed, run.lr, folder, record, metrics, scores, budget)


def columns(runs: list[FinishedRun]) -> list[tuple[str, str]]:
    """(benchmark, ability) pairs of the table: each benchmark's headline, then its radar
    abilities (its top level below the headline when it has no radar), those every run has."""
    first = runs[0].scores.benchmarks
    chosen = []
    for name in sorted(first):
        bench = first[name]
        names = [bench.headline] + (bench.radar or [a.ability for a in bench.abilities if a.ability != bench.headline
                                                    and a.level not in ("category", "subtask")])
        chosen += [(name, a) for a in names
                   if all(name in r.scores.benchmarks and r.scores.benchmarks[name].get(a) for r in runs)]
    return chosen


def mean_over_seeds(variant: str, runs: list[FinishedRun]) -> CheckpointScores:
    """One CheckpointScores per variant: each ability's score averaged over the seeds that have it."""
    benchmarks = {}
    shared = set.intersection(*(set(r.scores.benchmarks) for r in runs))
    for name in sorted(shared):
        first = runs[0].scores.benchmarks[name]
        abilities = []
        for ability in first.abilities:
            found = [r.scores.benchmarks[name].get(ability.ability) for r in runs]
            if all(found):
                abilities.append(AbilityScore(ability.ability, ability.level, sum(a.raw for a in found) / len(found),
                                              sum(a.score for a in found) / len(found)))
        # The source named in abilities.md: the variant's folder, whose runs' files were averaged.
        benchmarks[name] = BenchmarkScores(name, first.kind, runs[0].folder.parent, abilities, first.headline,
                                           [a for a in first.radar if any(x.ability == a for x in abilities)],
                                           first.split)
    return CheckpointScores(variant, runs[0].folder.parent, benchmarks)


def fairness(runs: list[FinishedRun], search: list[FinishedRun]) -> list[str]:
    """Plain-language checks: same steps, batch and data order per seed; differences named."""
    lines = []
    # a search run may be final too; the same variant and rate under two budgets are two runs
    everything = list({(r.budget, r.variant, r.lr, r.seed): r for r in runs + search}.values())
    for key, what in (("global_step", "optimizer steps"), ("global_batch", "global batch")):
        values = sorted({r.metrics[key] for r in everything})
        lines.append(f"- {what}: {'the same for every run, ' + str(values[0]) if len(values) == 1 else 'DIFFER: ' + str(values)}")
    for seed in sorted({r.seed for r in everything}):
        digests = {f"{r.budget + ' ' if r.budget else ''}{r.variant} lr {r.lr:g}": r.metrics["data_order"]
                   for r in everything if r.seed == seed}
        if len(set(digests.values())) == 1:
            lines.append(f"- data order, seed {seed}: the same in all {len(digests)} runs "
                         f"(fingerprint {next(iter(digests.values()))[:12]})")
        else:
            groups: dict[str, list[str]] = {}
            for name, digest in digests.items():
                groups.setdefault(digest[:12], []).append(name)
            lines.append(f"- data order, seed {seed}: DIFFERS between runs: {groups}")
    return lines


def _memory(run: FinishedRun) -> float:
    return run.metrics["peak_memory_bytes"] / GIB


def build_tables(runs_by_variant: dict[str, list[FinishedRun]], allocations: dict[str, Allocation],
                 reference: str) -> tuple[list[str], dict]:
    """The main table (a row per variant) and the paired-difference table; also their numbers."""
    all_runs = [r for runs in runs_by_variant.values() for r in runs]
    picked = columns(all_runs)
    header = ["variant", "rank", "adapter params (vs ref.)", "trainable", "lr", "wall s", "tokens/s",
              "peak GiB"] + [f"{b}: {a}" for b, a in picked] + ["overall", f"overall vs {reference} (95% CI, MDE)"]
    rows, numbers = [], {}
    for variant, runs in runs_by_variant.items():
        allocation = allocations[variant]
        overall = summarize([r.average for r in runs])
        difference = compare(runs, runs_by_variant[reference]) if variant != reference else None
        cells = {f"{b}: {a}": summarize([score(r, b, a) for r in runs]) for b, a in picked}
        wall, speed, memory = (summarize([r.record["wall_s"] for r in runs]),
                               summarize([r.metrics["tokens_per_second"] for r in runs]),
                               summarize([_memory(r) for r in runs]))
        rows.append([variant, allocation.rank_text, f"{allocation.adapter_parameters:,} ({allocation.ratio:.3f})",
                     f"{runs[0].metrics['trainable_parameters']:,}", f"{runs[0].lr:g}", wall.text(0), speed.text(0),
                     f"{memory.mean:.2f}"] + [cells[c].text() for c in cells] +
                    [overall.text(), difference.text() if difference else "(reference)"])
        numbers[variant] = {"rank": allocation.r, "experts": allocation.num_experts, "alpha": allocation.alpha,
                            "adapter_parameters": allocation.adapter_parameters, "budget_ratio": allocation.ratio,
                            "trainable_parameters": runs[0].metrics["trainable_parameters"], "lr": runs[0].lr,
                            "seeds": [r.seed for r in runs], "wall_s": _plain(wall), "tokens_per_second": _plain(speed),
                            "peak_memory_gib": _plain(memory), "overall": _plain(overall),
                            "overall_vs_reference": difference.plain() if difference else None,
                            "abilities": {c: _plain(s) for c, s in cells.items()},
                            "per_seed_overall": {r.seed: r.average for r in runs}}
    lines = markdown_table(header, rows)
    others = [v for v in runs_by_variant if v != reference]
    methods = set()
    diff_rows = []
    for b, a in picked:
        row = [f"{b}: {a}"]
        for variant in others:
            difference = compare(runs_by_variant[variant], runs_by_variant[reference], b, a)
            methods.add(difference.method)
            numbers[variant].setdefault("abilities_vs_reference", {})[f"{b}: {a}"] = difference.plain()
            row.append(difference.text())
        diff_rows.append(row)
    how = " and ".join(sorted(methods)) or "seeds and questions"
    lines += ["", f"Paired differences to {reference} per ability (same seed and question; mean, 95% interval over "
                  f"{how}, minimum detectable effect at 80% power; 'includes 0' means no difference shown):", ""]
    lines += markdown_table(["ability"] + others, diff_rows) if others else ["(no variant besides the reference)"]
    return lines, numbers


def comparisons(grid, runs_by_variant: dict[str, list[FinishedRun]], reference: str) -> list[tuple[str, str]]:
    """Pairs to conclude on: every variant against the reference, and an ablation (a variant
    taking another's rate with lr_from) against the variant it ablates."""
    pairs = [(v, reference) for v in runs_by_variant if v != reference]
    for variant in runs_by_variant:
        source = grid.variant(variant).lr_from
        if source and source in runs_by_variant and source != reference:
            pairs.append((variant, source))
    return pairs


def conclusions(grid, runs_by_variant: dict[str, list[FinishedRun]], reference: str) -> tuple[list[str], dict]:
    """A sentence per comparison, on the overall score and each benchmark's headline."""
    lines, numbers = [], {}
    first = next(iter(runs_by_variant.values()))[0].scores.benchmarks
    for variant, other in comparisons(grid, runs_by_variant, reference):
        differences = [compare(runs_by_variant[variant], runs_by_variant[other])]
        differences += [compare(runs_by_variant[variant], runs_by_variant[other], b, first[b].headline)
                        for b in sorted(first)]
        lines.append(f"- {sentence(differences)}")
        numbers[f"{variant} vs {other}"] = {d.metric: d.plain() for d in differences}
    return lines, numbers


def _plain(value) -> Optional[dict]:
    if isinstance(value, Summary):
        return {"mean": value.mean, "std": value.std, "n": value.n}
    if isinstance(value, Difference):
        return value.plain()
    return value


def trailing_mean(losses: dict[int, float], window: int) -> dict[int, float]:
    """Each logged step's mean of the logged losses in (step - window, step]. Text-only and image
    batches have very different losses, and every variant of a seed sees them at the same steps,
    so a window over steps keeps the comparison paired while the spikes average out."""
    steps = sorted(losses)
    return {s: sum(losses[t] for t in steps if s - window < t <= s) / sum(1 for t in steps if s - window < t <= s)
            for s in steps}


def plot_losses(runs_by_variant: dict[str, list[FinishedRun]], path: Path, window: int = 20) -> Path:
    """Training loss of every variant (trailing mean over `window` steps): mean over seeds, and a
    band from the lowest to the highest seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for variant, runs in runs_by_variant.items():
        curves = [trailing_mean(r.losses(), window) for r in runs]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            continue
        values = [[c[s] for c in curves] for s in steps]
        line, = axes.plot(steps, [sum(v) / len(v) for v in values], linewidth=1.5, label=f"{variant} (lr {runs[0].lr:g})")
        if len(curves) > 1:
            axes.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.08,
                              color=line.get_color())
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(f"training loss, mean over the last {window} steps")
    axes.set_title("stage 2: training loss per variant (mean over seeds; band: lowest to highest seed)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def edges(grid, budget, search_scores: dict[str, dict[float, float]], chosen: dict[str, float]) -> dict[str, str]:
    """Variants whose chosen rate is the lowest or highest of a searched grid: the best rate may
    lie beyond it, so the variant may be under-tuned."""
    flagged = {}
    for variant, scores in search_scores.items():
        rates = grid.rates(grid.variant(variant), budget)
        if len(rates) < 2:
            continue
        if chosen[variant] == max(rates):
            flagged[variant] = f"chose {chosen[variant]:g}, the highest of {sorted(rates)}: widen the grid upwards"
        elif chosen[variant] == min(rates):
            flagged[variant] = f"chose {chosen[variant]:g}, the lowest of {sorted(rates)}: widen the grid downwards"
    return flagged


def budget_section(grid, budget, allocations: dict[str, Allocation], finished: list[FinishedRun],
                   search_scores: dict, chosen: dict[str, float], report: Path, plots: bool) -> tuple[list[str], dict]:
    """The report's section on one budget, and its numbers for study.json."""
    suffix = f"_{budget.name}" if grid.nested else ""
    runs_by_variant: dict[str, list[FinishedRun]] = {}
    for run in finished:
        runs_by_variant.setdefault(run.variant, []).append(run)
    reference = budget.reference
    lines = [f"## Budget {budget.name}: {reference} at rank {budget.r}", ""]
    not_run = {v: a.unfit for v, a in allocations.items() if not a.fits}
    if reference not in runs_by_variant:
        return lines + ["No finished run of the reference variant yet."], {"not_run": not_run}
    write_report(normalize([mean_over_seeds(v, runs) for v, runs in runs_by_variant.items()]),
                 report / f"abilities{suffix}", plots=plots)
    write_report(normalize([r.scores for r in finished]), report / f"abilities_all{suffix}", plots=False)
    if plots:
        plot_losses(runs_by_variant, report / f"loss_curves{suffix}.png")
    table, numbers = build_tables(runs_by_variant, allocations, reference)
    sentences, comparison_numbers = conclusions(grid, runs_by_variant, reference)
    flagged = edges(grid, budget, search_scores, chosen)
    lines += ["### Results", ""] + table
    lines += ["", f"Budget: {reference} at rank {budget.r} = {allocations[reference].adapter_parameters:,} adapter "
              f"parameters; every other variant has the largest rank costing at most {1 + budget.tolerance:g} x that "
              f"(alpha = {budget.alpha_over_r:g} x rank, so every scale alpha / r is the same): "
              + ", ".join(f"{a.variant} {a.rank_text} ({a.ratio:.3f})" for a in allocations.values() if a.fits)]
    lines += [f"- not run: {v} ({why})" for v, why in not_run.items()]
    lines += ["", "### What it shows", ""] + sentences
    lines += ["", "### Learning-rate search", ""]
    if search_scores:
        lines += [f"Each variant trained once per rate on seed {grid.seeds[0]}, scored on the validation split "
                  f"({grid.evaluation.get('validation')}, mean headline score); the best rate is used for every "
                  "seed. A variant with lr_from takes its source's rate.", ""]
        rates = sorted({lr for scores in search_scores.values() for lr in scores})
        lines += markdown_table(["variant"] + [f"lr {lr:g}" for lr in rates] + ["chosen", "edge of its grid"],
                                [[v] + [f"{search_scores[v][lr]:.1f}" if lr in search_scores[v] else "" for lr in rates]
                                 + [f"{chosen[v]:g}", f"**yes**: {flagged[v]}" if v in flagged else "no"]
                                 for v in search_scores])
        lines += ["", "Chosen at an edge (possibly under-tuned): "
                  + ("; ".join(f"**{v}** {why}" for v, why in flagged.items()) if flagged else "none.")]
    else:
        lines += ["One learning rate per variant (no search): " + ", ".join(f"{v} {lr:g}" for v, lr in chosen.items())]
    lines += ["", f"Figures: abilities{suffix}/radar_*.png (per-ability scores on 0-100 and normalized, "
              f"one polygon per variant), loss_curves{suffix}.png.", ""]
    return lines, {"reference": reference, "r": budget.r, "chosen_lr": chosen, "edges": flagged, "not_run": not_run,
                   "search": {v: {f"{lr:g}": s for lr, s in scores.items()} for v, scores in search_scores.items()},
                   "variants": numbers, "comparisons": comparison_numbers}


def write_study_report(out: Path, grid, allocations: dict[str, dict[str, Allocation]], finished: list[FinishedRun],
                       search: list[FinishedRun], search_scores: dict, chosen: dict, plots: bool = True) -> Path:
    """allocations, search_scores and chosen are per budget name."""
    report = Path(out) / "report"
    report.mkdir(parents=True, exist_ok=True)
    seeds = sorted({r.seed for r in finished})
    lines = [f"# Study: {grid.name}", "",
             f"Grid: `{grid.path}`. Seeds: {seeds}. Every variant is stage 2 from the same stage-1 checkpoint; "
             f"scores are on the test split ({grid.evaluation['test']}), 0-100, mean ± std over seeds. Differences "
             "are paired (same seed, same question), with a 95% interval over seeds and questions (a crossed "
             "random-effects model: training seeds and test questions are both samples) and the minimum "
             "detectable effect (MDE: the difference this study would detect 80% of the time at 95% confidence).", "",
             "Columns: rank (MoE-LoRA: experts x rank per expert); adapter params: adapter tensors on the language "
             "model and their ratio to the reference's budget; trainable: everything trained (adapters, projector); "
             "wall s: the stage-2 launch from start to exit (startup included); tokens/s: non-padding tokens over "
             "training time, all ranks; peak GiB: highest rank's peak memory "
             f"({finished[0].metrics['peak_memory_measure'].split(',')[0]}); overall: mean of the benchmarks' "
             "headline scores.", ""]
    budgets = {}
    for budget in grid.budgets:
        section, budgets[budget.name] = budget_section(
            grid, budget, allocations[budget.name], [r for r in finished if r.budget == budget.name],
            search_scores.get(budget.name, {}), chosen[budget.name], report, plots)
        lines += section
    lines += ["## Fairness", ""] + fairness(finished, search)
    lines += ["", "## Files", "", "- abilities*/: per-ability scores of each variant, the mean over its seeds, "
              "normalized across the budget's variants (abilities.md), radar_*.png (scores and normalized scores, "
              "one polygon per variant)",
              "- abilities_all*/: every final run on its own", "- loss_curves*.png: training loss of every variant",
              "- study.json: every number above"]
    path = report / "study.md"
    path.write_text("\n".join(lines) + "\n")
    (report / "study.json").write_text(json.dumps({"grid": str(grid.path), "seeds": seeds, "budgets": budgets},
                                                  indent=2) + "\n")
    return path
