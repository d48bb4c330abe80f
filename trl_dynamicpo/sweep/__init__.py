"""Sweeps over K x objective x variant x seed for any recipe: grid, runs, paired statistics and the report.

    from trl_dynamicpo.sweep import SweepArguments, run_sweep

    run_sweep(SweepArguments(sweep_dir="sweeps/lastfm", ks=[1, 5, 15], train_overrides=["learning_rate=1e-4"]),
              "recipe.yaml")

`trl-dynamicpo sweep` (`trl_dynamicpo.cli.sweep`) is the command over `run_sweep`; `benchmarks/collapse.py` holds
presets over it. `SweepArguments` is `trl_dynamicpo.pipeline.SweepArguments`, the recipe's `sweep:` section.
"""

from ..pipeline.arguments import SweepArguments
from .grid import GridPoint, build_grid
from .report import write_report
from .run import SweepPlan, ensure_sft, reference_result, run_point, run_sweep
from .stats import PairedComparison, mean_interval, paired_comparison


__all__ = [
    "GridPoint",
    "PairedComparison",
    "SweepArguments",
    "SweepPlan",
    "build_grid",
    "ensure_sft",
    "mean_interval",
    "paired_comparison",
    "reference_result",
    "run_point",
    "run_sweep",
    "write_report",
]
