"""`trl-dynamicpo sweep`: the K x objective x variant grid, with seeds, over any recipe, resumable, with a report.

    trl-dynamicpo sweep --config recipe.yaml --sweep_dir sweeps/lastfm --ks 1 5 15 --objectives dmpo \\
        --variants plain dynamicpo --seeds 0 1 2
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m trl_dynamicpo sweep --config ...

It runs the recipe's `sft` stage once if its output is missing, evaluates the SFT model, then `train` + `eval` for
every grid point (each one exactly `trl-dynamicpo train --config recipe.yaml <point flags>`), and writes
`runs.csv`, `curves.csv`, `summary.md` (paired statistics) and plots into `sweep_dir`. Finished runs are cached:
rerun the same command to resume. Answers "at which K does plain DMPO start to collapse on my data, and does
DynamicPO hold?" before spending GPU days on the full recipe.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SweepArguments:
    """The grid and the outputs of `trl-dynamicpo sweep` (the recipe's own keys set everything else)."""

    sweep_dir: str = field(default="sweep", metadata={"help": "Where runs, results, tables and plots go."})
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 15, 19], metadata={"help": "Values of K."})
    objectives: list[str] = field(
        default_factory=lambda: ["dmpo", "sdpo", "mppo"], metadata={"help": "Base objectives (dmpo, sdpo, mppo)."}
    )
    variants: list[str] = field(
        default_factory=lambda: ["plain", "dynamicpo"],
        metadata={"help": "Switch settings: plain, dynamicpo, selection_only, beta_only (trl_dynamicpo.variants)."},
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Training seeds of the main grid."})
    ablation_ks: list[int] = field(
        default_factory=list, metadata={"help": "Also run DMPO selection_only and beta_only at these K."}
    )
    extra_seeds: list[int] = field(
        default_factory=list, metadata={"help": "More seeds for DMPO plain and DynamicPO (at extra_seed_ks)."}
    )
    extra_seed_ks: list[int] = field(
        default_factory=list, metadata={"help": "K values of the extra seeds (default: all of ks)."}
    )
    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra evaluation files (S-DPO format), each evaluated like the recipe's eval split."},
    )
    sft_args: str = field(default="", metadata={"help": "Extra flags of the sft stage, one string: '--max_steps 10'."})
    train_args: str = field(
        default="", metadata={"help": "Extra flags of every train run, one string: '--learning_rate 1e-4 --beta 0.5'."}
    )
    eval_args: str = field(default="", metadata={"help": "Extra flags of every eval, one string."})
    keep_models: bool = field(default=True, metadata={"help": "Keep each run's trained model (or adapter)."})
    title: str = field(default="DynamicPO sweep", metadata={"help": "Title of summary.md."})


def run_sweep(sweep_args: SweepArguments, recipe: str, notes: Sequence[str] = ()) -> dict:
    """Run (or resume) the sweep; returns {"reference", "results", "files"}."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from trl_dynamicpo.sweep import SweepPlan, build_grid, ensure_sft, reference_result, run_point, write_report

    from .common import logger, setup_logging
    from .parsing import has_accelerator

    setup_logging()
    state = PartialState(cpu=not has_accelerator())
    sweep_dir = Path(sweep_args.sweep_dir)
    eval_sets = {"eval": None, **{Path(f).name.split(".")[0]: f for f in sweep_args.eval_files}}
    plan = SweepPlan(
        recipe=recipe,
        sweep_dir=sweep_dir,
        eval_sets=eval_sets,
        sft_args=shlex.split(sweep_args.sft_args),
        train_args=shlex.split(sweep_args.train_args),
        eval_args=shlex.split(sweep_args.eval_args),
        keep_models=sweep_args.keep_models,
    )
    grid = build_grid(
        sweep_args.ks, sweep_args.objectives, sweep_args.variants, sweep_args.seeds,
        ablation_ks=sweep_args.ablation_ks, extra_seeds=sweep_args.extra_seeds, extra_seed_ks=sweep_args.extra_seed_ks,
    )  # fmt: skip

    def log(message: str) -> None:
        if state.is_main_process:
            logger.info(message)

    log(f"Sweep of {len(grid)} runs into {sweep_dir}")
    sft_path = ensure_sft(plan, log=log)
    reference = reference_result(plan, sft_path, log=log)
    results = []
    for point in tqdm(grid, desc="Sweep", disable=not state.is_local_main_process):
        results.append(run_point(plan, point, log=log))
    files = {}
    if state.is_main_process:
        files = write_report(sweep_dir, reference, results, sweep_args.title, notes)
        logger.info("Wrote %s", ", ".join(str(p) for p in files.values()))
    state.wait_for_everyone()
    return {"reference": reference, "results": results, "files": files}


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    from .parsing import parse_command, pop_option

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = pop_option(list(argv), "--config")
    if recipe is None:
        raise SystemExit("error: `trl-dynamicpo sweep` needs --config recipe.yaml (the train/eval settings to sweep)")
    (sweep_args,) = parse_command("sweep", (SweepArguments,), argv)
    out = run_sweep(sweep_args, recipe)
    if out["files"]:
        print((Path(sweep_args.sweep_dir) / "summary.md").read_text(encoding="utf-8"))
    return 0
