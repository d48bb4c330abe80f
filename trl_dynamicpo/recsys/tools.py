"""Command-line entry points for the data tools: writing leak-free files and running the leak check.

The argument dataclasses work with `trl.TrlParser` / `transformers.HfArgumentParser` (fields carry `help`
metadata); `main_leak_free(argv)` and `main_leak_check(argv)` parse with plain argparse so that they start fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .candidates import leak_check, make_leak_free_file
from .readers import read_catalogue, read_examples


@dataclass
class LeakFreeArguments:
    """Arguments of `trl-dynamicpo leak-free`."""

    src: str = field(metadata={"help": "S-DPO-format prompts to rebuild (JSON or JSON lines, optionally gzip)."})
    dst: str = field(metadata={"help": "Output file (JSON lines; gzip when it ends with .gz)."})
    catalogue: str | None = field(
        default=None, metadata={"help": "items.txt catalogue (default: every item seen in src)."}
    )
    seed: int = field(default=0, metadata={"help": "Global seed of the per-prompt candidate streams."})
    num_candidates: int = field(default=20, metadata={"help": "Candidates per prompt, target included."})


@dataclass
class LeakCheckArguments:
    """Arguments of `trl-dynamicpo leak-check`."""

    train: str = field(metadata={"help": "Training prompts (S-DPO format)."})
    eval: str = field(metadata={"help": "Evaluation prompts (S-DPO format)."})
    catalogue: str | None = field(default=None, metadata={"help": "items.txt, to parse names containing colons."})
    similarity: str = field(default="jaccard", metadata={"help": "Candidate-list similarity: jaccard or count."})
    seed: int = field(default=0, metadata={"help": "Seed of the random fallback guess."})
    output: str | None = field(default=None, metadata={"help": "Also write the result to this JSON file."})


def build_parser(cls: type, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser for an argument dataclass: required fields are positional, others `--name` options."""
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip())
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        convert = int if kind in (int, int | None) else float if kind in (float, float | None) else str
        help_text = f.metadata.get("help", "")
        if f.default is dataclasses.MISSING:
            parser.add_argument(f.name, type=convert, help=help_text)
        else:
            parser.add_argument(
                f"--{f.name}", type=convert, default=f.default, help=f"{help_text} (default: {f.default})"
            )
    return parser


def _parse(cls: type, argv: Sequence[str] | None, prog: str) -> Any:
    namespace = build_parser(cls, prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    return cls(**vars(namespace))


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
    args = _parse(LeakFreeArguments, argv, "leak-free")
    path = run_leak_free(args)
    print(f"wrote {path}")
    return 0


def main_leak_check(argv: Sequence[str] | None = None) -> int:
    """`leak-check TRAIN EVAL [--catalogue items.txt] [--similarity jaccard] [--output result.json]`; prints JSON."""
    args = _parse(LeakCheckArguments, argv, "leak-check")
    result = run_leak_check(args)
    print(json.dumps(result, indent=2))
    return 0
