"""`trl-dynamicpo leak-free` and `trl-dynamicpo leak-check`: writing leak-free files and running the leak check.

Thin commands over `trl_dynamicpo.recsys.make_leak_free_file` and `trl_dynamicpo.recsys.leak_check`. The argument
dataclasses are parsed like every other command's (`parse_command`, with `trl.TrlParser`), the input files as
positional arguments. Neither tool imports torch, so both start fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..recsys.candidates import NUM_CANDIDATES, leak_check, make_leak_free_file
from ..recsys.readers import read_catalogue, read_examples
from .parsing import parse_command


@dataclass
class LeakFreeArguments:
    """Arguments of `trl-dynamicpo leak-free`."""

    src: str = field(metadata={"help": "S-DPO-format prompts to rebuild (JSON or JSON lines, optionally gzip)."})
    dst: str = field(metadata={"help": "Output file (JSON lines; gzip when it ends with .gz)."})
    catalogue: str | None = field(
        default=None, metadata={"help": "items.txt catalogue (default: every item seen in src)."}
    )
    seed: int = field(default=0, metadata={"help": "Global seed of the per-prompt candidate streams."})
    num_candidates: int = field(default=NUM_CANDIDATES, metadata={"help": "Candidates per prompt, target included."})


@dataclass
class LeakCheckArguments:
    """Arguments of `trl-dynamicpo leak-check`."""

    train: str = field(metadata={"help": "Training prompts (S-DPO format)."})
    eval: str = field(metadata={"help": "Evaluation prompts (S-DPO format)."})
    catalogue: str | None = field(default=None, metadata={"help": "items.txt, to parse names containing colons."})
    similarity: str = field(default="jaccard", metadata={"help": "Candidate-list similarity: jaccard or count."})
    seed: int = field(default=0, metadata={"help": "Seed of the random fallback guess."})
    output: str | None = field(default=None, metadata={"help": "Also write the result to this JSON file."})


def _parse(cls: type, argv: Sequence[str] | None, command: str, positional: tuple[str, ...]):
    (args,) = parse_command(command, (cls,), argv, positional=positional)
    return args


def run_leak_free(args: LeakFreeArguments) -> Path:
    """Write the leak-free version of `args.src` to `args.dst`; returns the path written."""
    return make_leak_free_file(args.src, args.dst, args.catalogue, seed=args.seed, num_candidates=args.num_candidates)


def run_leak_check(args: LeakCheckArguments) -> dict[str, float]:
    """Run `leak_check` on two files; writes `args.output` when set and returns the result."""
    catalogue = read_catalogue(args.catalogue) if args.catalogue else None
    train = read_examples(args.train, catalogue=catalogue)
    evaluation = read_examples(args.eval, catalogue=catalogue)
    result = leak_check(train, evaluation, similarity=args.similarity, seed=args.seed, show_progress=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main_leak_free(argv: Sequence[str] | None = None) -> int:
    """`leak-free SRC DST [--catalogue items.txt] [--seed 0] [--num_candidates 20]`; returns the exit code."""
    args = _parse(LeakFreeArguments, argv, "leak-free", ("src", "dst"))
    path = run_leak_free(args)
    print(f"wrote {path}")
    return 0


def main_leak_check(argv: Sequence[str] | None = None) -> int:
    """`leak-check TRAIN EVAL [--catalogue items.txt] [--similarity jaccard] [--output result.json]`; prints JSON."""
    args = _parse(LeakCheckArguments, argv, "leak-check", ("train", "eval"))
    result = run_leak_check(args)
    print(json.dumps(result, indent=2))
    return 0
