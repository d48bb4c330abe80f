"""`trl-dynamicpo` / `python -m trl_dynamicpo`: the command-line entry point.

Every command parses its arguments with `trl.TrlParser` (`trl_dynamicpo.cli.parsing`): `--config recipe.yaml` sets
defaults (see `trl_dynamicpo.pipeline.recipes` for the per-command sections and `--variant`), flags override them,
and the command calls its library function (`trl_dynamicpo.pipeline.run_train`, ...). Each command runs unchanged
under `accelerate launch` and `torchrun`::

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m trl_dynamicpo train --config recipe.yaml
    torchrun --nproc_per_node 4 -m trl_dynamicpo train --config recipe.yaml
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib import import_module


COMMANDS = {
    "sft": ("trl_dynamicpo.cli.sft", "main", "supervised fine-tuning on (prompt, target item)"),
    "train": ("trl_dynamicpo.cli.train", "main", "DynamicPO / DMPO / S-DPO / MPPO preference training"),
    "eval": ("trl_dynamicpo.cli.evaluate", "main", "ranking (HR@k, NDCG@k) and generation (HR@1, ValidRatio)"),
    "sweep": ("trl_dynamicpo.cli.sweep", "main", "K x objective x variant grid with seeds, paired statistics, plots"),
    "quickstart": ("trl_dynamicpo.cli.quickstart", "main", "offline CPU demo: tiny model, SFT, DynamicPO, eval"),
    "leak-free": ("trl_dynamicpo.cli.leak_tools", "main_leak_free", "rewrite a prompt file with leak-free candidates"),
    "leak-check": ("trl_dynamicpo.cli.leak_tools", "main_leak_check", "measure how much candidate lists leak"),
    "data": ("trl_dynamicpo.cli.data_build", "main", "build a recipe's data files from LLaRA's raw files (data build)"),
}

USAGE = """usage: trl-dynamicpo <command> [--config recipe.yaml] [--variant NAME] [--flag value ...]

DynamicPO for TRL: multi-negative preference optimisation for LLM-based recommendation.

commands:
{commands}

examples:
  trl-dynamicpo quickstart                                   # offline demo on the bundled LastFM sample
  trl-dynamicpo sft   --config recipes/lastfm/llama3_8b_qlora.yaml
  trl-dynamicpo train --config recipes/lastfm/llama3_8b_qlora.yaml [--variant dmpo_plain]
  trl-dynamicpo eval  --config recipes/lastfm/llama3_8b_qlora.yaml --protocol both
  trl-dynamicpo sweep --config recipes/lastfm/llama3_8b_qlora.yaml --ks 1 5 15 --objectives dmpo --seeds 0 1 2
  accelerate launch --config_file recipes/accelerate/multi_gpu.yaml -m trl_dynamicpo train --config ...
  trl-dynamicpo leak-free train.json train.leak_free.jsonl.gz --catalogue items.txt
  trl-dynamicpo data build lastfm --raw raw/lastfm --out data/lastfm      # the recipes' data from LLaRA's files

`trl-dynamicpo <command> --help` lists every option (TRL's SFTConfig / DynamicPOConfig / ModelConfig fields
plus the recommendation-data ones).
"""


def usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {name:<{width}}  {text}" for name, (_, _, text) in COMMANDS.items()))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        from trl_dynamicpo import __version__

        print(f"trl-dynamicpo {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"trl-dynamicpo: unknown command {command!r}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[command]
    if command in ("leak-free", "leak-check", "data") and int(os.environ.get("RANK", "0")) != 0:
        return 0  # launched on several processes: one of them does the (single-process) data work
    result = getattr(import_module(module), function)(rest)
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
