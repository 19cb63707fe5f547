"""The adapter comparison: a grid of stage-2 runs from one stage-1 checkpoint, launched through
the stage scripts, evaluated through the evaluation room, reported per ability.

grid.py (the grid file), budget.py (equal parameter budgets), plan.py (runs and their flags),
execute.py (inputs, launches, evaluation, resuming), stats.py (mean, std, paired intervals),
report.py (tables, abilities, loss curves), driver.py (`llava-moslora study`).
"""
from .grid import DEFAULT_GRID, Grid, GridError, load_grid

__all__ = ["DEFAULT_GRID", "Grid", "GridError", "load_grid", "run_study"]


def run_study(*args, **kwargs):
    from .driver import run_study as run

    return run(*args, **kwargs)
