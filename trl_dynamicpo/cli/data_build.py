"""`trl-dynamicpo data build DATASET --raw DIR --out DIR`: the paper recipes' data files from LLaRA's raw files.

A thin layer over `trl_dynamicpo.recsys.build.build_dataset` (and `recsys.download.download_raw` for
`--download`); the arguments are parsed with `trl.TrlParser` (`parse_command`), DATASET as a positional argument.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from trl_dynamicpo.recsys.build import CANDIDATE_RULES, DATASETS, MANIFEST_FILE, MIN_HISTORY, SPLITS
from trl_dynamicpo.recsys.candidates import NUM_CANDIDATES
from trl_dynamicpo.recsys.raw import NAME_RULES


USAGE = """usage: trl-dynamicpo data <subcommand> [options]

subcommands:
  build   build train/valid/test.jsonl.gz, items.txt and manifest.json from LLaRA's raw files

examples:
  trl-dynamicpo data build lastfm --raw raw/lastfm --out data/lastfm                 # leak-free candidate lists
  trl-dynamicpo data build lastfm --raw raw/lastfm --out data/lastfm --candidates papers   # S-DPO's published lists
  trl-dynamicpo data build steam --raw raw/steam --out data/steam --download          # fetch LLaRA's files first
  trl-dynamicpo data build llara --raw raw/goodreads --out data/goodreads --padding_id 4550 \\
      --catalogue id2name.txt --name_rule goodreads

`trl-dynamicpo data build --help` lists every option.
"""

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class DataBuildArguments:
    """Arguments of `trl-dynamicpo data build`."""

    dataset: str = field(
        metadata={
            "help": f"Which raw files: {', '.join(DATASETS)} ('llara': any other LLaRA-style split, with --padding_id "
            "and --catalogue)."
        }
    )
    raw: str = field(metadata={"help": "Folder of the raw files (LLaRA's tables and catalogue)."})
    out: str = field(
        metadata={"help": "Output folder: train/valid/test.jsonl.gz, items.txt, manifest.json (e.g. data/lastfm)."}
    )
    candidates: str = field(
        default="leak_free",
        metadata={
            "help": "Candidate lists: 'leak_free' (new lists seeded by the row, never the target; the default) or "
            "'papers' (S-DPO's rule, seeded by the target id: the published lists, which leak the target).",
            "choices": list(CANDIDATE_RULES),
        },
    )
    candidate_seed: int = field(
        default=0,
        metadata={"help": "Seed of the leak-free lists (the recipes' candidate_seed 0 redraws the same lists)."},
    )
    num_candidates: int = field(default=NUM_CANDIDATES, metadata={"help": "Candidates per prompt, target included."})
    splits: list[str] = field(
        default_factory=lambda: list(SPLITS),
        metadata={
            "help": "Splits to build (those without a raw file are skipped and listed as missing).",
            "choices": list(SPLITS),
        },
    )
    padding_id: int | None = field(
        default=None, metadata={"help": "The id padding `seq` (default: the dataset's; required for 'llara')."}
    )
    catalogue: str | None = field(
        default=None,
        metadata={"help": "Catalogue file (default: the dataset's in --raw; required for 'llara'; relative to --raw)."},
    )
    name_rule: str | None = field(
        default=None,
        metadata={
            "help": "Name rule of the catalogue: 'llara' (id::name, LastFM / Steam), 'goodreads' (also cut at '('), "
            "'movielens' (u.item). Default: the dataset's ('llara' for 'llara').",
            "choices": list(NAME_RULES),
        },
    )
    min_history: int = field(
        default=MIN_HISTORY, metadata={"help": "Drop rows with a smaller len_seq (3 in LLaRA and S-DPO)."}
    )
    expect_sha256: list[str] = field(
        default_factory=list,
        metadata={"help": "FILE=SHA256 pairs: refuse a raw file whose sha256 differs (on top of the built-in table)."},
    )
    check_published: bool = field(
        default=True,
        metadata={"help": "Refuse raw files that differ from the published ones whose sha256 is known (LastFM's)."},
    )
    download: bool = field(
        default=False,
        metadata={"help": "First download the public raw files into --raw (LLaRA's Hub dataset, S-DPO's JSON)."},
    )

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}.")
        for pair in self.expect_sha256:
            name, sep, digest = pair.partition("=")
            if not sep or not name or not _SHA256.match(digest):
                raise ValueError(f"--expect_sha256 takes FILE=SHA256 (64 hex digits); got {pair!r}.")

    @property
    def expected_hashes(self) -> dict[str, str]:
        """`expect_sha256` as file name -> sha256."""
        return dict(pair.split("=", 1) for pair in self.expect_sha256)


def run_build(args: DataBuildArguments) -> dict:
    """Download (with `args.download`) and build; returns the manifest."""
    from trl_dynamicpo.recsys.build import build_dataset

    if args.download:
        from trl_dynamicpo.recsys.download import download_raw

        download_raw(args.dataset, args.raw)
    return build_dataset(
        args.dataset,
        args.raw,
        args.out,
        candidates=args.candidates,
        candidate_seed=args.candidate_seed,
        num_candidates=args.num_candidates,
        splits=args.splits,
        padding_id=args.padding_id,
        catalogue=args.catalogue,
        name_rule=args.name_rule,
        min_history=args.min_history,
        expect_sha256=args.expected_hashes,
        check_published=args.check_published,
    )


def main_build(argv: Sequence[str] | None = None) -> int:
    """`data build DATASET --raw DIR --out DIR [...]`; prints one line per split written and the missing ones."""
    from trl_dynamicpo.cli.parsing import parse_command
    from trl_dynamicpo.pipeline.runtime import setup_logging

    (args,) = parse_command("data", (DataBuildArguments,), argv, prog="trl-dynamicpo data build", positional=("dataset",))
    setup_logging()
    manifest = run_build(args)
    for split, entry in manifest["splits"].items():
        dropped = ", ".join(f"{n} {why}" for why, n in entry["dropped"].items()) or "none"
        print(f"{split}: {entry['rows_written']} prompts from {entry['source']} (dropped: {dropped}) -> {entry['output']}")
    for split in manifest["missing_splits"]:
        print(f"{split}: missing (no raw file)")
    print(f"items: {manifest['items']['items']} -> {args.out}/items.txt; manifest: {args.out}/{MANIFEST_FILE}")
    return 0


SUBCOMMANDS = {"build": main_build}


def main(argv: Sequence[str] | None = None) -> int:
    """`trl-dynamicpo data <subcommand> ...`; `data --help` lists the subcommands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"trl-dynamicpo data: unknown subcommand {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
