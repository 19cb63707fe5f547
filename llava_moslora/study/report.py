"""The study's report: per-ability scores of every variant (mean over seeds, normalized across
variants, radar), one table of costs and scores with paired differences to the reference
variant, the learning-rate search, the fairness checks, and the loss curves.

Writes under <out>/report/: study.md, study.json, abilities/ (mean over seeds: abilities.md,
abilities.json, radar_*.png, one polygon per variant), abilities_all/ (every final run), and
loss_curves.png. Scores are read back from the evaluation files, as `llava-moslora abilities` does.
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
from .stats import PairedDifference, Summary, paired_difference, summarize

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

    @property
    def average(self) -> float:
        """Paper-style average: mean of the benchmarks' headline scores (0-100)."""
        benchmarks = self.scores.benchmarks.values()
        return sum(b.headline_score for b in benchmarks) / len(benchmarks)

    def losses(self) -> dict[int, float]:
        state = json.loads((self.folder / "model" / "trainer_state.json").read_text())
        return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def load_finished(run, folder: Path, record: dict, scores: CheckpointScores) -> FinishedRun:
    metrics = json.loads((folder / "model" / METRICS_FILE).read_text())
    return FinishedRun(run.variant, run.seed, run.lr, folder, record, metrics, scores)


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


def _score(run: FinishedRun, benchmark: str, ability: str) -> float:
    return run.scores.benchmarks[benchmark].get(ability).score


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
    everything = list({(r.variant, r.lr, r.seed): r for r in runs + search}.values())  # a search run may be final too
    for key, what in (("global_step", "optimizer steps"), ("global_batch", "global batch")):
        values = sorted({r.metrics[key] for r in everything})
        lines.append(f"- {what}: {'the same for every run, ' + str(values[0]) if len(values) == 1 else 'DIFFER: ' + str(values)}")
    for seed in sorted({r.seed for r in everything}):
        digests = {f"{r.variant} lr {r.lr:g}": r.metrics["data_order"] for r in everything if r.seed == seed}
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
    reference_runs = {r.seed: r for r in runs_by_variant[reference]}
    header = ["variant", "rank", "adapter params (vs ref.)", "trainable", "lr", "wall s", "tokens/s",
              "peak GiB"] + [f"{b}: {a}" for b, a in picked] + ["overall", f"overall vs {reference} (95% CI)"]
    rows, numbers = [], {}
    for variant, runs in runs_by_variant.items():
        allocation = allocations[variant]
        paired = [r for r in runs if r.seed in reference_runs]
        overall = summarize([r.average for r in runs])
        difference = (paired_difference([r.average for r in paired], [reference_runs[r.seed].average for r in paired])
                      if variant != reference and paired else None)
        cells = {f"{b}: {a}": summarize([_score(r, b, a) for r in runs]) for b, a in picked}
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
                            "overall_vs_reference": _plain(difference),
                            "abilities": {c: _plain(s) for c, s in cells.items()},
                            "per_seed_overall": {r.seed: r.average for r in runs}}
    lines = markdown_table(header, rows)
    lines += ["", f"Paired differences to {reference} per ability (same seed; mean over seeds, 95% t interval; "
                  "'includes 0' means no difference shown at that level):", ""]
    others = [v for v in runs_by_variant if v != reference]
    diff_rows = []
    for b, a in picked:
        row = [f"{b}: {a}"]
        for variant in others:
            paired = [r for r in runs_by_variant[variant] if r.seed in reference_runs]
            difference = paired_difference([_score(r, b, a) for r in paired],
                                           [_score(reference_runs[r.seed], b, a) for r in paired])
            numbers[variant].setdefault("abilities_vs_reference", {})[f"{b}: {a}"] = _plain(difference)
            row.append(difference.text())
        diff_rows.append(row)
    lines += markdown_table(["ability"] + others, diff_rows) if others else ["(no variant besides the reference)"]
    return lines, numbers


def _plain(value) -> Optional[dict]:
    if value is None:
        return None
    if isinstance(value, Summary):
        return {"mean": value.mean, "std": value.std, "n": value.n}
    if isinstance(value, PairedDifference):
        return {"mean": value.mean, "low": value.low, "high": value.high, "n": value.n,
                "includes_zero": value.includes_zero}
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


def write_study_report(out: Path, grid, allocations: dict[str, Allocation], finished: list[FinishedRun],
                       search: list[FinishedRun], search_scores: dict, chosen: dict[str, float],
                       plots: bool = True) -> Path:
    report = Path(out) / "report"
    report.mkdir(parents=True, exist_ok=True)
    runs_by_variant: dict[str, list[FinishedRun]] = {}
    for run in finished:
        runs_by_variant.setdefault(run.variant, []).append(run)
    reference = grid.budget["reference"]
    means = [mean_over_seeds(v, runs) for v, runs in runs_by_variant.items()]
    write_report(normalize(means), report / "abilities", plots=plots)
    write_report(normalize([r.scores for r in finished]), report / "abilities_all", plots=False)
    if plots:
        plot_losses(runs_by_variant, report / "loss_curves.png")
    table, numbers = build_tables(runs_by_variant, allocations, reference)
    seeds = sorted({r.seed for r in finished})
    lines = [f"# Study: {grid.name}", "",
             f"Grid: `{grid.path}`. Seeds: {seeds}. Every variant is stage 2 from the same stage-1 checkpoint; "
             f"scores are on the test split ({grid.evaluation['test']}), 0-100, mean ± std over seeds.", "",
             "## Results", ""] + table
    lines += ["", "Columns: rank (MoE-LoRA: experts x rank per expert); adapter params: adapter tensors on the "
              f"language model and their ratio to {reference}'s budget; trainable: everything trained (adapters, "
              "projector); wall s: the stage-2 launch from start to exit (startup included); tokens/s: non-padding "
              "tokens over training time, all ranks; peak GiB: highest rank's peak memory "
              f"({finished[0].metrics['peak_memory_measure'].split(',')[0]}); overall: mean of the benchmarks' "
              "headline scores.", "",
              "## Fairness", ""] + fairness(finished, search)
    lines += [f"- budget: {grid.budget['r']}-rank {reference} adapters = {allocations[reference].adapter_parameters:,} "
              "parameters; every other variant has the largest rank that does not cost more "
              f"(alpha = {grid.budget.get('alpha_over_r', 2.0):g} x rank, so every scale alpha / r is the same): "
              + ", ".join(f"{a.variant} {a.rank_text} ({a.ratio:.3f})" for a in allocations.values())]
    lines += ["", "## Learning-rate search", ""]
    if search_scores:
        lines += [f"Each variant trained once per rate on seed {seeds[0]}, scored on the validation split "
                  f"({grid.evaluation.get('validation')}, mean headline score); the best rate is used for every seed.", ""]
        rates = sorted({lr for scores in search_scores.values() for lr in scores})
        lines += markdown_table(["variant"] + [f"lr {lr:g}" for lr in rates] + ["chosen"],
                           [[v] + [f"{search_scores[v][lr]:.1f}" if lr in search_scores[v] else "" for lr in rates]
                            + [f"{chosen[v]:g}"] for v in search_scores])
    else:
        lines += ["One learning rate per variant (no search): " + ", ".join(f"{v} {lr:g}" for v, lr in chosen.items())]
    lines += ["", "## Files", "", "- abilities/: per-ability scores of each variant, the mean over its seeds (the "
              "runs under runs/<variant>/), normalized across variants (abilities.md), radar_*.png (one polygon "
              "per variant)",
              "- abilities_all/: every final run on its own", "- loss_curves.png: training loss of every variant"]
    path = report / "study.md"
    path.write_text("\n".join(lines) + "\n")
    (report / "study.json").write_text(json.dumps(
        {"grid": str(grid.path), "seeds": seeds, "reference": reference, "chosen_lr": chosen,
         "search": {v: {f"{lr:g}": s for lr, s in scores.items()} for v, scores in search_scores.items()},
         "variants": numbers}, indent=2) + "\n")
    return path
