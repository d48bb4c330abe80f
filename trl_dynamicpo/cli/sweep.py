"""`trl-dynamicpo sweep`: the K x objective x variant grid over a recipe, `trl_dynamicpo.sweep.run_sweep`.

    trl-dynamicpo sweep --config recipe.yaml --sweep_dir sweeps/lastfm --ks 1 5 15 --objectives dmpo \\
        --variants plain dynamicpo --seeds 0 1 2 --train_overrides learning_rate=1e-4
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m trl_dynamicpo sweep --config ...
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..sweep.run import run_sweep
from .parsing import parse_command, pop_option


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = pop_option(list(argv), "--config")
    (sweep_args,) = parse_command("sweep", argv=argv)  # `--help` prints the options and exits here
    if recipe is None:
        raise SystemExit("error: `trl-dynamicpo sweep` needs --config recipe.yaml (the train/eval settings to sweep)")
    out = run_sweep(sweep_args, recipe)
    if out["files"]:
        print((Path(sweep_args.sweep_dir) / "summary.md").read_text(encoding="utf-8"))
    return 0
