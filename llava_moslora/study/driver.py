"""`llava-moslora study`: the whole comparison, in order: inputs, budgets, the learning-rate
search on the validation split, the final runs on every seed, the test scores, the report."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Optional

from .execute import Launcher, StudyStopped, check_record, evaluate_run, prepare_inputs, train_run
from .grid import Grid, GridError, load_grid
from .plan import allocate, candidate_runs, check_flags, chosen_rates, final_runs, group_of, search_runs
from .report import load_finished, write_study_report


def run_study(grid: Grid, out: Path, *, stage1: Optional[str] = None, dry_run: bool = False,
              plots: bool = True, log=print) -> Path:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(grid.launch, log)
    started = time.time()
    if not dry_run:
        from ..evaluation.runner import choose_backend

        grid.evaluation["backend"] = choose_backend(grid.evaluation.get("backend", "auto"))  # said once
    inputs = prepare_inputs(grid, out, launcher, stage1) if not dry_run else None
    llm = inputs.llm_path if inputs else _llm_for_dry_run(grid, stage1, launcher)
    allocations = {budget.name: allocate(grid, llm, budget) for budget in grid.budgets}
    for budget in grid.budgets:
        log(f"budget {budget.name}: " + ", ".join(
            f"{a.variant} r={a.rank_text} ({a.adapter_parameters:,} adapter parameters, {a.ratio:.3f} of "
            f"{budget.reference}'s)" if a.fits else f"{a.variant} not run ({a.unfit})"
            for a in allocations[budget.name].values()))
    search = [run for budget in grid.budgets for run in search_runs(grid, budget, allocations[budget.name])]
    provisional = _finals(grid, allocations, {b.name: {v.name: grid.rates(v, b)[0] for v in grid.variants}
                                              for b in grid.budgets})
    check_flags(search + provisional)
    if dry_run:
        for run in search or provisional:
            log(f"{run.key}: bash scripts/finetune.sh {' '.join(run.flags)}")
        reused = len({(r.group, r.variant) for r in search})
        log(f"{len(search)} search run(s), then {len(provisional)} final run(s), {reused} of them a search run: "
            f"{len(search) + len(provisional) - reused} stage-2 launches")
        _trainer_dry_runs(grid, out, stage1, provisional, launcher, log)
        return out
    for budget in grid.budgets:  # what is on disk fits this study, or it stops now
        for run in candidate_runs(grid, budget, allocations[budget.name]):
            check_record(run, out, inputs, launcher)

    def step(index: int, total: int, what: str) -> None:
        log(f"[{index}/{total}] {what} ({time.time() - started:.0f} s)")
        if launcher.stop_requested:  # a signal reached this process alone, between launches
            name = signal.Signals(launcher.stop_requested[0]).name
            raise StudyStopped(f"stopped by {name} before {what}; run the same command again to go on", 128 + launcher.stop_requested[0])

    search_scores: dict[str, dict[str, dict[float, float]]] = {b.name: {} for b in grid.budgets}
    searched = []
    group_budget = {group_of(grid, b): b.name for b in grid.budgets}
    for index, run in enumerate(search, 1):
        step(index, len(search), f"search {run.key}")
        record = train_run(run, out, inputs, launcher)
        scores = evaluate_run(run, out, "validation", grid.evaluation["validation"], inputs, grid.evaluation)
        searched.append(load_finished(run, run.folder(out), record, scores, group_budget[run.group]))
        search_scores[group_budget[run.group]].setdefault(run.variant, {})[run.lr] = searched[-1].average
        log(f"  validation: {searched[-1].average:.1f}")
    chosen = {b.name: chosen_rates(grid, b, allocations[b.name], search_scores[b.name]) for b in grid.budgets}
    finals = _finals(grid, allocations, chosen)
    finished = []
    for index, run in enumerate(finals, 1):
        step(index, len(finals), f"final {run.key}")
        record = train_run(run, out, inputs, launcher)
        scores = evaluate_run(run, out, "test", grid.evaluation["test"], inputs, grid.evaluation)
        finished.append(load_finished(run, run.folder(out), record, scores, group_budget[run.group]))
        log(f"  test: {finished[-1].average:.1f} (trained in {record['wall_s']:.0f} s)")
    path = write_study_report(out, grid, allocations, finished, searched, search_scores, chosen, plots=plots)
    log(f"study done in {time.time() - started:.0f} s; report: {path}")
    return path


def _finals(grid: Grid, allocations: dict, chosen: dict) -> list:
    """Final runs seed by seed (every budget's, then the next seed): a study stopped part-way has
    whole seeds to report on."""
    per_budget = {b.name: final_runs(grid, b, allocations[b.name], chosen[b.name]) for b in grid.budgets}
    return [run for seed in grid.seeds for b in grid.budgets for run in per_budget[b.name] if run.seed == seed]


def _llm_for_dry_run(grid: Grid, stage1: Optional[str], launcher: Launcher) -> str:
    from ..model import RECIPE_FILE, Recipe

    checkpoint = Path(stage1) if stage1 else grid.resolve(grid.stage1.get("checkpoint"))
    model = launcher.settings().get("MODEL")  # the grid's launch: or the environment's, as prepare_inputs
    if model:
        return model
    if checkpoint is not None and (checkpoint / RECIPE_FILE).is_file():
        return Recipe.load(checkpoint).language_model
    if checkpoint is not None and (checkpoint / "config.json").is_file():  # a whole LLaVA (llava-hf)
        return str(checkpoint)
    bases = grid.resolve(grid.stage1.get("bases"))
    if not bases:
        raise GridError("--dry-run needs the language model: a stage-1 checkpoint directory, stage1.bases, or MODEL")
    return str(bases / "llm")


def _trainer_dry_runs(grid: Grid, out: Path, stage1: Optional[str], runs: list, launcher: Launcher, log) -> None:
    """Each variant's `finetune.sh --dry_run` (per budget), with the grid's launch settings: its
    trainable parameters by component and kind, batch arithmetic, schedule and per-GPU memory for
    the world the grid launches on. Only when the data and the stage-1 start exist already."""
    checkpoint = Path(stage1).resolve() if stage1 else grid.resolve(grid.stage1.get("checkpoint"))
    data_path = grid.resolve(grid.data.get("data_path"))
    missing = ("the grid makes its data when it runs" if "synth" in grid.data
               else "stage 1 is trained when the study runs" if checkpoint is None
               else f"no stage-1 checkpoint at {checkpoint}" if not checkpoint.exists()
               else f"no data at {data_path}" if data_path is None or not data_path.exists() else None)
    if missing:
        log(f"each run's parameters, batches and memory (finetune.sh --dry_run): not worked out, {missing}")
        return
    done = set()
    for run in runs:
        if (run.group, run.variant) in done:
            continue
        done.add((run.group, run.variant))
        log(f"\n{run.group + '/' if run.group else ''}{run.variant}: bash scripts/finetune.sh --dry_run ...")
        log(launcher.output("finetune.sh", ["--dry_run", *run.flags], STAGE1_DIR=checkpoint, DATA_PATH=data_path,
                            IMAGE_FOLDER=grid.resolve(grid.data.get("image_folder")),
                            OUTPUT_DIR=run.folder(out) / "model").rstrip())


def add_arguments(parser, name: str = "study") -> None:
    parser.description = (
        "Compare adapters the way the papers do: from one stage-1 checkpoint, stage 2 for every variant of a "
        "grid (equal trainable-parameter budgets, same data order and steps, the same learning-rate search on "
        "a validation split, several seeds), each run through scripts/finetune.sh and scored on the test "
        "benchmarks; then a report of per-ability scores, costs and paired differences. Running it again "
        "skips finished runs and resumes an interrupted one.")
    parser.add_argument("--grid", default=None,
                        help="the grid, YAML or JSON (default: studies/shapes.yaml, the embedded ShapesVQA comparison; "
                             "studies/llava15.yaml the adapters on LLaVA-1.5's recipe; studies/moslora-*.yaml and "
                             "studies/moelora-*.yaml the papers' own recipes)")
    parser.add_argument("--out", default=None, help="study folder (default: runs/study, with --quick runs/study-quick)")
    parser.add_argument("--quick", action="store_true", help="apply the grid's `quick:` overrides (a first look)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds instead of the grid's")
    parser.add_argument("--variants", default=None,
                        help="comma-separated variants to run (each budget's reference, and the variants whose "
                             "rate they take, are always kept)")
    parser.add_argument("--stage1", default=None, help="stage-1 checkpoint to start from instead of the grid's")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the budgets and each run's trainer flags, check them, launch nothing")
    parser.add_argument("--no-plot", "--no_plot", dest="no_plot", action="store_true", help="skip the PNG figures")


def run(args, name: str = "study") -> int:
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
        grid = load_grid(args.grid, quick=args.quick, seeds=seeds, variants=variants)
        out = Path(args.out or ("runs/study-quick" if args.quick else "runs/study"))
        run_study(grid, out, stage1=args.stage1, dry_run=args.dry_run, plots=not args.no_plot,
                  log=lambda message: print(message, flush=True))
    except StudyStopped as stop:
        print(f"llava-moslora {name}: {stop}", file=sys.stderr, flush=True)
        return stop.code
    except KeyboardInterrupt:  # between launches (an evaluation): nothing half-done is kept as done
        print(f"llava-moslora {name}: interrupted; run the same command again to go on", file=sys.stderr, flush=True)
        return 130
    except (GridError, ValueError, FileNotFoundError) as error:
        print(f"llava-moslora {name}: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0
