"""From a grid to the runs of a study, each with its full list of trainer flags.

Fair by construction: every run of one seed gets the same seed and data seed (so the same data
order), the same steps, batch and launch settings (the grid's `flags:` and `launch:`, shared by
all), and its variant's rank from budget.py. The learning-rate search trains every (variant,
learning rate) once, on the first seed, and scores it on the validation split; the final runs
train the chosen rate on every seed (the search's run on the first seed is one of them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..adapters import AdapterConfig
from .budget import Allocation, adapter_parameters, match_rank
from .grid import Grid, Variant, flag_list


@dataclass(frozen=True)
class Run:
    variant: str
    lr: float
    seed: int
    flags: tuple[str, ...] = field(compare=False)

    @property
    def key(self) -> str:
        return f"{self.variant}/lr{self.lr:g}-seed{self.seed}"

    def folder(self, study_dir: Path) -> Path:
        return Path(study_dir) / "runs" / self.variant / f"lr{self.lr:g}-seed{self.seed}"


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


def allocate(grid: Grid, llm_path: str) -> dict[str, Allocation]:
    """Each variant's rank and adapter parameters under the reference variant's budget."""
    scale = float(grid.budget.get("alpha_over_r", 2.0))
    reference = parse_model_arguments({**variant_settings(grid, grid.reference), "lora_r": grid.budget["r"]})
    budget = adapter_parameters(llm_path, reference.adapter_config("language_model"))
    allocations = {}
    for variant in grid.variants:
        settings = variant_settings(grid, variant)
        pinned = "lora_r" in settings
        config = parse_model_arguments({**settings, "lora_r": settings.get("lora_r", grid.budget["r"])}
                                       ).adapter_config("language_model")
        r = config.r if pinned or variant.name == grid.reference.name else match_rank(llm_path, config, budget)
        sized = AdapterConfig.from_dict({**config.to_dict(), "r": r})
        alpha = float(settings["lora_alpha"]) if "lora_alpha" in settings else scale * r
        allocations[variant.name] = Allocation(
            variant.name, config.kind, r, alpha, config.num_experts if config.kind == "moelora" else 1,
            adapter_parameters(llm_path, sized), budget, matched=not pinned)
    return allocations


def run_flags(grid: Grid, variant: Variant, allocation: Allocation, lr: float, seed: int) -> tuple[str, ...]:
    """The trainer flags of one run, passed after scripts/finetune.sh's own (so they win)."""
    settings: dict[str, Any] = {"lora_r": allocation.r, "lora_alpha": allocation.alpha}
    settings.update(variant_settings(grid, variant))
    settings.setdefault("mm_projector_lr", lr)  # the projector follows the searched rate unless pinned
    settings.update(learning_rate=lr, seed=seed, data_seed=seed, resume_from_checkpoint="auto")
    return tuple(flag_list(settings))


def search_runs(grid: Grid, allocations: dict[str, Allocation]) -> list[Run]:
    """(variant, learning rate) on the first seed; empty when every variant has one rate."""
    if all(len(v.lr_grid) == 1 for v in grid.variants):
        return []
    seed = grid.seeds[0]
    return [Run(v.name, lr, seed, run_flags(grid, v, allocations[v.name], lr, seed))
            for v in grid.variants for lr in v.lr_grid]


def final_runs(grid: Grid, allocations: dict[str, Allocation], chosen: dict[str, float]) -> list[Run]:
    """Every variant at its chosen learning rate on every seed, seed by seed."""
    return [Run(v.name, chosen[v.name], seed, run_flags(grid, v, allocations[v.name], chosen[v.name], seed))
            for seed in grid.seeds for v in grid.variants]


def candidate_runs(grid: Grid, allocations: dict[str, Allocation]) -> list[Run]:
    """Every run the study could make (each variant, rate and seed): what is on disk is checked
    against all of them before the first launch, not when the study reaches them."""
    return [Run(v.name, lr, seed, run_flags(grid, v, allocations[v.name], lr, seed))
            for v in grid.variants for lr in v.lr_grid for seed in grid.seeds]


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
