"""The study grid: a YAML or JSON file saying what to compare and how (studies/*.yaml).

A grid names the data, the stage-1 checkpoint (or how to train it), the benchmarks (a test split
and a validation split for the learning-rate search), the seeds, the launch settings, the
parameter budgets (`budget:` one, or `budgets:` several by name, e.g. LoRA at r = 32 and r = 4;
every variant runs under each), the learning-rate grid, trainer flags for every run and the
variants, each a set of `llava-moslora train` flags (`lr_from: <variant>` trains at the rate
chosen for that variant instead of searching: an ablation changes one thing). `quick:` holds
overrides for --quick (mappings merge key by key; null removes a key, e.g. a variant). Relative
paths are relative to the grid file's folder.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..evaluation.batching import DEFAULT_BATCH_SIZE, check_batch_size

GRIDS_DIR = Path(__file__).resolve().parents[2] / "studies"
DEFAULT_GRID = GRIDS_DIR / "shapes.yaml"
TOP_LEVEL = {"name", "data", "stage1", "evaluation", "seeds", "launch", "budget", "budgets", "lr_grid", "flags",
             "variants", "quick"}
# Set per run by the study itself; a grid that sets them would break the comparison's pairing.
RESERVED_FLAGS = {"seed", "data_seed", "output_dir", "learning_rate", "resume_from_checkpoint",
                  "pretrain_mm_mlp_adapter", "data_path", "image_folder"}
# What every run of the comparison must share: a variant may not set these (put them under `flags:`).
SHARED_FLAGS = {"max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                "model_max_length", "group_by_modality_length", "dataloader_drop_last", "lr_scheduler_type",
                "warmup_steps", "lr_scheduler_kwargs"}
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GridError(ValueError):
    """A grid file that cannot be run as written; the message says where and why."""


@dataclass
class Variant:
    name: str
    flags: dict[str, Any]  # trainer flags of this variant (adapter, riemannian, optim, ...)
    lr_grid: Optional[list[float]]  # its own rates (e.g. SGD's), else its budget's or the grid's
    lr_from: Optional[str] = None  # trains at the rate chosen for this variant (not searched)


@dataclass
class Budget:
    """Adapter parameters every variant may spend: those of `reference` at rank `r`."""

    name: str  # names the report's section (and, with several budgets, a folder of runs)
    reference: str
    r: int
    alpha_over_r: float = 2.0
    lr_grid: Optional[list[float]] = None  # rates for this budget (a lower rank may want higher ones)
    tolerance: float = 0.0  # a variant may cost up to (1 + tolerance) x the reference's parameters


@dataclass
class Grid:
    path: Path
    name: str
    data: dict[str, Any]
    stage1: dict[str, Any]
    evaluation: dict[str, Any]
    seeds: list[int]
    launch: dict[str, str]
    budgets: list[Budget]
    flags: dict[str, Any]
    variants: list[Variant]
    lr_grid: list[float] = field(default_factory=list)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def rates(self, variant: Variant, budget: Budget) -> list[float]:
        """The learning rates `variant` is searched over under `budget` (its lr_from source's)."""
        source = self.variant(variant.lr_from or variant.name)
        return source.lr_grid or budget.lr_grid or self.lr_grid

    def resolve(self, value: Optional[str]) -> Optional[Path]:
        """A path of the grid, relative to the grid file's folder."""
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.path.parent / path).resolve()

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    @property
    def nested(self) -> bool:
        """Several budgets: each has its own folder of runs (runs/<budget>/<variant>/...)."""
        return len(self.budgets) > 1


def read_grid_file(path: Path) -> dict:
    """The grid file's mapping; a GridError says where a malformed file breaks."""
    text = Path(path).read_text()
    import yaml

    try:
        data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise GridError(f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise GridError(f"{path}: malformed YAML{where}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(data, dict):
        raise GridError(f"{path}: expected a mapping at the top level")
    return data


def merge(base: dict, overrides: dict) -> dict:
    """base with overrides applied; mappings merge key by key, null removes a key, everything
    else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_grid(path=None, quick: bool = False, seeds: Optional[list[int]] = None,
              variants: Optional[list[str]] = None) -> Grid:
    """Read and check a grid; --quick applies its `quick:` section; seeds / variants narrow it."""
    path = Path(path or DEFAULT_GRID).resolve()
    if not path.is_file():
        raise GridError(f"grid file not found: {path}")
    raw = read_grid_file(path)
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise GridError(f"{path}: unknown top-level keys {unknown}; known: {sorted(TOP_LEVEL)}")
    if quick:
        if not isinstance(raw.get("quick"), dict):
            raise GridError(f"{path}: --quick needs a `quick:` section of overrides")
        raw = merge({k: v for k, v in raw.items() if k != "quick"}, raw["quick"])
    raw.pop("quick", None)
    if seeds is not None:
        raw["seeds"] = seeds
    grid = _build(path, raw)
    if variants:
        missing = sorted(set(variants) - {v.name for v in grid.variants})
        if missing:
            raise GridError(f"no variant(s) {missing} in {path}; it has {[v.name for v in grid.variants]}")
        keep = set(variants) | {b.reference for b in grid.budgets}  # differences are taken to the reference
        keep |= {v.lr_from for v in grid.variants if v.name in keep and v.lr_from}  # and rates come from there
        grid.variants = [v for v in grid.variants if v.name in keep]
    return grid


def _build(path: Path, raw: dict) -> Grid:
    where = str(path)
    for key in ("data", "stage1", "evaluation", "variants"):
        if not isinstance(raw.get(key), dict):
            raise GridError(f"{where}: `{key}:` must be a mapping")
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise GridError(f"{where}: `seeds:` must be a list of distinct integers, got {seeds!r}")
    flags = dict(raw.get("flags") or {})
    # the grid's rates, unless every variant (or budget) brings its own
    lr_grid = _lr_grid(raw["lr_grid"], f"{where}: lr_grid") if raw.get("lr_grid") is not None else []
    _check_flags(flags, f"{where}: flags")
    variants = []
    for name, spec in raw["variants"].items():
        if not VARIANT_NAME.match(str(name)):
            raise GridError(f"{where}: variant name {name!r} must be letters, digits, '_', '.', '-' (it names a folder)")
        spec = dict(spec or {})
        own_grid = spec.pop("lr_grid", None)
        lr_from = spec.pop("lr_from", None)
        _check_flags(spec, f"{where}: variants.{name}")
        shared = sorted(set(spec) & SHARED_FLAGS)
        if shared:
            raise GridError(f"{where}: variants.{name} sets {shared}, which every run shares (same steps, batches "
                            f"and schedule for a fair comparison); put them under `flags:`")
        if "adapter" not in spec and "adapter" not in flags:
            raise GridError(f"{where}: variants.{name} needs `adapter:` (lora | moslora | moelora)")
        variant_grid = _lr_grid(own_grid, f"{where}: variants.{name}.lr_grid") if own_grid is not None else None
        if lr_from is not None and own_grid is not None:
            raise GridError(f"{where}: variants.{name} has both lr_from and lr_grid; lr_from takes another "
                            "variant's chosen rate, so it is not searched")
        variants.append(Variant(str(name), spec, variant_grid, None if lr_from is None else str(lr_from)))
    names = {v.name for v in variants}
    for variant in variants:
        source = next((v for v in variants if v.name == variant.lr_from), None)
        if variant.lr_from is not None and (source is None or source.lr_from is not None):
            raise GridError(f"{where}: variants.{variant.name}.lr_from must name a variant that searches its own "
                            f"rate, one of {sorted(v.name for v in variants if v.lr_from is None)}; "
                            f"got {variant.lr_from!r}")
    budgets = _budgets(raw, where, names)
    for variant in variants:
        if variant.lr_from is None and not lr_grid and not variant.lr_grid and not all(b.lr_grid for b in budgets):
            raise GridError(f"{where}: variants.{variant.name} has no learning rate: give `lr_grid:` at the top "
                            "level, in the variant or in every budget")
    launch = {str(k): str(v) for k, v in (raw.get("launch") or {}).items()}
    evaluation = dict(raw["evaluation"])
    if not evaluation.get("test"):
        raise GridError(f"{where}: evaluation.test must name the test benchmarks or suite")
    search_size = max(len(rates) for rates in [lr_grid] + [b.lr_grid or [] for b in budgets]
                      + [v.lr_grid or [] for v in variants])
    if search_size > 1 and not evaluation.get("validation"):
        raise GridError(f"{where}: a learning-rate grid of {search_size} values needs evaluation.validation "
                        f"(benchmarks apart from the test split to choose on)")
    if evaluation.get("validation") and evaluation["validation"] == evaluation["test"]:
        raise GridError(f"{where}: evaluation.validation must not be the test split")
    try:
        check_batch_size(evaluation.get("batch_size", DEFAULT_BATCH_SIZE))
    except ValueError as error:
        raise GridError(f"{where}: evaluation.batch_size: {error}") from None
    return Grid(path, str(raw.get("name") or path.stem), dict(raw["data"]), dict(raw["stage1"]), evaluation,
                seeds, launch, budgets, flags, variants, lr_grid, raw)


def _budgets(raw: dict, where: str, variants: set[str]) -> list[Budget]:
    """`budget:` (one mapping) or `budgets:` (name -> mapping), each {reference, r, alpha_over_r,
    lr_grid}."""
    if ("budget" in raw) == ("budgets" in raw):
        raise GridError(f"{where}: give `budget:` (one) or `budgets:` (several, by name), not "
                        f"{'both' if 'budget' in raw else 'neither'}")
    if "budget" in raw:
        if not isinstance(raw["budget"], dict):
            raise GridError(f"{where}: `budget:` must be a mapping (reference, r, alpha_over_r)")
        specs = {f"r{raw['budget'].get('r')}": raw["budget"]}
    else:
        specs = raw["budgets"]
        if not isinstance(specs, dict) or not specs or not all(isinstance(s, dict) for s in specs.values()):
            raise GridError(f"{where}: `budgets:` must map names to budgets, e.g. "
                            "{r32: {reference: lora, r: 32}, r4: {reference: lora, r: 4}}")
    budgets = []
    for name, spec in specs.items():
        at = f"{where}: budget" if "budget" in raw else f"{where}: budgets.{name}"
        if not VARIANT_NAME.match(str(name)):
            raise GridError(f"{at}: a budget name must be letters, digits, '_', '.', '-' (it names a folder)")
        unknown = sorted(set(spec) - {"reference", "r", "alpha_over_r", "lr_grid", "tolerance"})
        if unknown:
            raise GridError(f"{at}: unknown keys {unknown}; known: reference, r, alpha_over_r, lr_grid, tolerance")
        if spec.get("reference") not in variants:
            raise GridError(f"{at}.reference must name a variant, got {spec.get('reference')!r}")
        if not isinstance(spec.get("r"), int) or isinstance(spec.get("r"), bool) or spec["r"] <= 0:
            raise GridError(f"{at}.r (the reference variant's rank) must be a positive integer, got {spec.get('r')!r}")
        try:
            scale, tolerance = float(spec.get("alpha_over_r", 2.0)), float(spec.get("tolerance", 0.0))
        except (TypeError, ValueError):
            raise GridError(f"{at}: alpha_over_r and tolerance must be numbers, got "
                            f"{spec.get('alpha_over_r')!r} and {spec.get('tolerance')!r}") from None
        if not 0 <= tolerance < 1:
            raise GridError(f"{at}.tolerance is the fraction a variant may cost beyond the budget, in [0, 1); "
                            f"got {tolerance}")
        rates = _lr_grid(spec["lr_grid"], f"{at}.lr_grid") if "lr_grid" in spec else None
        budgets.append(Budget(str(name), spec["reference"], spec["r"], scale, rates, tolerance))
    return budgets


def _lr_grid(value, where: str) -> list[float]:
    values = value if isinstance(value, list) else [value]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise GridError(f"{where} must be a list of learning rates, got {value!r}") from None
    if not values or any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise GridError(f"{where} must be a non-empty list of distinct positive learning rates, got {value!r}")
    return values


def _check_flags(flags: dict, where: str) -> None:
    reserved = sorted(set(flags) & RESERVED_FLAGS)
    if reserved:
        raise GridError(f"{where}: {reserved} are set by the study for each run (seeds, learning-rate grid, "
                        f"output folders, data from `data:`); remove them")
    for key, value in flags.items():
        if isinstance(value, (dict, list)):
            raise GridError(f"{where}.{key}: a trainer flag takes one value, got {value!r}")


def flag_list(settings: dict[str, Any]) -> list[str]:
    """{"max_steps": 80, "riemannian": True} -> ["--max_steps", "80", "--riemannian", "True"]."""
    return [item for key, value in settings.items() for item in (f"--{key}", flag_value(value))]


def flag_value(value: Any) -> str:
    """A grid value as the command line spells it (booleans as True/False, like HfArgumentParser)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)
