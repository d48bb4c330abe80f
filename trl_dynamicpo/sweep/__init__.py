"""Sweeps over K x objective x variant x seed for any recipe: grid, runs, paired statistics and the report.

`trl-dynamicpo sweep` (`trl_dynamicpo.cli.sweep`) is the command; `benchmarks/collapse.py` holds presets over it.
"""

from .grid import GridPoint, build_grid
from .report import write_report
from .run import SweepPlan, ensure_sft, reference_result, run_point
from .stats import PairedComparison, mean_interval, paired_comparison


__all__ = [
    "GridPoint",
    "PairedComparison",
    "SweepPlan",
    "build_grid",
    "ensure_sft",
    "mean_interval",
    "paired_comparison",
    "reference_result",
    "run_point",
    "write_report",
]
