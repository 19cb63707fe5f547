"""From a grid to the runs of a study, each with its full list of trainer flags.

Fair by construction: every run of one seed gets the same seed and data seed (so the same data
order), the same steps, batch and launch settings (the grid's `flags:` and `launch:`, shared by
all), and its variant's rank from budget.py, per budget. The learning-rate search trains every
(variant, learning rate) once per budget, on the first seed, and scores it on the validation
split; a variant with `lr_from` is not searched and takes its source's chosen rate. The final
runs train the chosen rate on every seed (the search's run on the first seed is one of them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapters import AdapterConfig
from .budget import Allocation, OverBudget, adapter_parameters, match_rank
from .grid import Budget, Grid, GridError, Variant, flag_list


@dataclass(frozen=True)
class Run:
    variant: str
    lr: float
    seed: int
    flags: tuple[str, ...] = field(compare=False)
    group: str = ""  # the budget's name when the grid has several (a folder level), else ""

    @property
    def key(self) -> str:
        return f"{self.group + '/' if self.group else ''}{self.variant}/lr{self.lr:g}-seed{self.seed}"

    def folder(self, study_dir: Path) -> Path:
        return Path(study_dir) / "runs" / self.group / self.variant / f"lr{self.lr:g}-seed{self.seed}"


def group_of(grid: Grid, budget: Budget) -> str:
    return budget.name if grid.nested else ""


def variant_settings(grid: Grid, variant: Variant) -> dict[str, Any]:
    """The grid's flags for every run, then the variant's (which win)."""
    return {**grid.flags, **variant.flags}


def parse_model_arguments(settings: dict[str, Any]):
    """ModelArguments as `llava-moslora train` would parse these flags (other flags ignored)."""
    from transformers import HfArgumentParser

    from ..model import ModelArguments

    (model_args, _rest) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(
        args=flag_list(settings), return_remaining_strings=True)
    return model_args


def allocate(grid: Grid, llm_path: str, budget_spec: Budget) -> dict[str, Allocation]:
    """Each variant's rank and adapter parameters under the reference variant's budget."""
    scale = budget_spec.alpha_over_r
    reference = parse_model_arguments({**variant_settings(grid, grid.variant(budget_spec.reference)),
                                       "lora_r": budget_spec.r})
    remote = reference.trust_remote_code  # the grid's flags, shared by every variant
    budget = adapter_parameters(llm_path, reference.adapter_config("language_model"), remote)
    allocations = {}
    for variant in grid.variants:
        settings = variant_settings(grid, variant)
        pinned = "lora_r" in settings
        config = parse_model_arguments({**settings, "lora_r": settings.get("lora_r", budget_spec.r)}
                                       ).adapter_config("language_model")
        try:
            r = (config.r if pinned or variant.name == budget_spec.reference
                 else match_rank(llm_path, config, int(budget * (1 + budget_spec.tolerance)), remote))
        except OverBudget as error:
            allocations[variant.name] = Allocation(variant.name, config.kind, 0, 0.0, config.num_experts, 0, budget,
                                                   matched=False, unfit=str(error))
            continue
        sized = AdapterConfig.from_dict({**config.to_dict(), "r": r})
        alpha = float(settings["lora_alpha"]) if "lora_alpha" in settings else scale * r
        allocations[variant.name] = Allocation(
            variant.name, config.kind, r, alpha, config.num_experts if config.kind == "moelora" else 1,
            adapter_parameters(llm_path, sized, remote), budget, matched=not pinned)
    for variant in grid.variants:  # a variant taking an unfit variant's rate has no rate to take
        source = allocations[variant.lr_from or variant.name]
        if not source.fits and allocations[variant.name].fits:
            allocations[variant.name].unfit = f"takes its rate from {variant.lr_from}, which does not fit"
    return allocations


def running(grid: Grid, allocations: dict[str, Allocation]) -> list[Variant]:
    """The variants that fit the budget (the others are named in the report, not run)."""
    return [v for v in grid.variants if allocations[v.name].fits]


def run_flags(grid: Grid, variant: Variant, allocation: Allocation, lr: float, seed: int) -> tuple[str, ...]:
    """The trainer flags of one run, passed after scripts/finetune.sh's own (so they win)."""
    settings: dict[str, Any] = {"lora_r": allocation.r, "lora_alpha": allocation.alpha}
    settings.update(variant_settings(grid, variant))
    settings.setdefault("mm_projector_lr", lr)  # the projector follows the searched rate unless pinned
    settings.update(learning_rate=lr, seed=seed, data_seed=seed, resume_from_checkpoint="auto")
    return tuple(flag_list(settings))


def searched(grid: Grid, allocations: dict[str, Allocation]) -> list[Variant]:
    """The variants that run and choose their own rate (not lr_from)."""
    return [v for v in running(grid, allocations) if v.lr_from is None]


def search_runs(grid: Grid, budget: Budget, allocations: dict[str, Allocation]) -> list[Run]:
    """(variant, learning rate) on the first seed; empty when every variant has one rate."""
    sizes = {v.name: len(grid.rates(v, budget)) for v in searched(grid, allocations)}
    if len(set(sizes.values())) > 1:
        # Budgets may search different ranges; within one, a variant tried at more rates would
        # be favoured, so every variant that runs there gets as many.
        raise GridError(f"{grid.path}: under budget {budget.name} the variants search different numbers of "
                        f"learning rates ({', '.join(f'{n}: {k}' for n, k in sizes.items())}); every variant of a "
                        "budget gets the same search budget")
    if all(size == 1 for size in sizes.values()):
        return []
    seed, group = grid.seeds[0], group_of(grid, budget)
    return [Run(v.name, lr, seed, run_flags(grid, v, allocations[v.name], lr, seed), group)
            for v in searched(grid, allocations) for lr in grid.rates(v, budget)]


def chosen_rates(grid: Grid, budget: Budget, allocations: dict[str, Allocation],
                 scores: dict[str, dict[float, float]]) -> dict[str, float]:
    """Each variant's rate: the best validation score of its grid (its only rate without a
    search), or its lr_from source's. On a tie, the rate nearest the middle of the sorted grid
    (the lower of two equally near): of rates that score alike, an edge one is the likelier to
    have a better rate beyond it."""
    def best(variant: Variant) -> float:
        rates = grid.rates(variant, budget)
        if variant.name not in scores:
            return rates[0]
        ordered = sorted(rates)
        middle = (len(ordered) - 1) / 2
        return max(rates, key=lambda lr: (scores[variant.name][lr], -abs(ordered.index(lr) - middle), -lr))

    chosen = {v.name: best(v) for v in searched(grid, allocations)}
    return {v.name: chosen[v.lr_from or v.name] for v in running(grid, allocations)}


def final_runs(grid: Grid, budget: Budget, allocations: dict[str, Allocation], chosen: dict[str, float]) -> list[Run]:
    """Every variant at its chosen learning rate on every seed, seed by seed."""
    group = group_of(grid, budget)
    return [Run(v.name, chosen[v.name], seed, run_flags(grid, v, allocations[v.name], chosen[v.name], seed), group)
            for seed in grid.seeds for v in running(grid, allocations)]


def candidate_runs(grid: Grid, budget: Budget, allocations: dict[str, Allocation]) -> list[Run]:
    """Every run the study could make (each variant, rate and seed): what is on disk is checked
    against all of them before the first launch, not when the study reaches them."""
    group = group_of(grid, budget)
    return [Run(v.name, lr, seed, run_flags(grid, v, allocations[v.name], lr, seed), group)
            for v in running(grid, allocations) for lr in grid.rates(v, budget) for seed in grid.seeds]


def check_flags(runs: list[Run]) -> None:
    """Parse every run's flags the way `llava-moslora train` will, before anything is launched:
    a typo in the grid fails here, not an hour in."""
    from transformers import HfArgumentParser

    from ..model import ModelArguments
    from ..train.arguments import DataArguments, LlavaTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, LlavaTrainingArguments))
    for run in runs:
        try:
            parser.parse_args_into_dataclasses(args=[*run.flags, "--output_dir", "unused", "--use_cpu", "True"])
        except (SystemExit, ValueError) as error:
            raise ValueError(f"{run.key}: the grid's flags are not valid `llava-moslora train` flags ({error})") from None
