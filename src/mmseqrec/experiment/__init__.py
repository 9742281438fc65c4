"""Experiment grids: models x backbones x seeds x protocols, with a results table, paired tests and plots."""

from .config import GridConfig, load_grid
from .report import summarise, write_report
from .runner import plan_runs, run_grid

__all__ = ["GridConfig", "load_grid", "plan_runs", "run_grid", "summarise", "write_report"]
