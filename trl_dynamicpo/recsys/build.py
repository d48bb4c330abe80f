"""Build the S-DPO-format splits the recipes read from LLaRA's raw files, with a manifest (`trl-dynamicpo data build`).

`build_dataset("lastfm", raw_dir, out_dir)` reads LLaRA's split tables (`train_data.df`, `Val_data.df`,
`Test_data.df`, or the same columns as CSV / Parquet / JSON lines; `raw.read_raw_table`, pickles through the
restricted unpickler) and catalogue (`id2name.txt`, MovieLens `u.item`; `raw.read_raw_catalogue` with the dataset's
name rule), and writes into `out_dir`:

- `train.jsonl.gz`, `valid.jsonl.gz`, `test.jsonl.gz`: one prompt per row (`historyList`, `itemList`,
  `trueSelection`), for the splits whose raw file is there;
- `items.txt`: the one catalogue the splits share (`id::name`, the first id of each distinct name);
- `manifest.json`: every source file with its sha256 and row count, the rows dropped and why, the candidate rule
  and seed, the package version, and the splits that were missing.

Each row becomes a prompt as in LLaRA / S-DPO: rows with `len_seq < 3` are dropped, the padding id is removed from
`seq` (the history, oldest first) and `next` is the target. The candidate lists are

- `leak_free` (the default, as everywhere in the package): `leak_free_candidates` with `candidate_seed`, the same
  lists `sft` / `train` / `eval` redraw from these files with the same seed;
- `papers`: S-DPO's rule (`sdpo_candidates`, seeded by the target id), which reproduces the published files (the
  47,872 LastFM training prompts exactly) and leaks the target.

A split may also come as an S-DPO prompt file (`lastfm-val.json`, S-DPO's published LastFM validation split): it is
taken as it is (`papers`) or given leak-free lists. When both a raw table and such a file are there, the table is
the source and the file is compared with what was built (`reference` in the manifest).

Raw files whose sha256 is known (`PUBLISHED_SHA256`, or `expect_sha256`) are checked before they are read: a file
that differs from the published one is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .candidates import NUM_CANDIDATES, leak_free_candidates, sdpo_candidates
from .raw import FRAME_SUFFIXES, NAME_RULES, RawCatalogue, RawTable, read_raw_catalogue, read_raw_table
from .readers import RecDataError, RecExample, read_examples, write_examples


logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
SPLITS = ("train", "valid", "test")
OUTPUT_FILES = {"train": "train.jsonl.gz", "valid": "valid.jsonl.gz", "test": "test.jsonl.gz"}
ITEMS_FILE = "items.txt"
MANIFEST_FILE = "manifest.json"
CANDIDATE_RULES = ("leak_free", "papers")
# LLaRA and S-DPO keep the rows with at least 3 history items.
MIN_HISTORY = 3

# Raw table names per split, lower-cased (LLaRA: train_data.df, Val_data.df, Test_data.df; S-DPO's copies may carry
# the dataset as a prefix: movielens_Val_data.df).
RAW_SPLIT_STEMS = {"train": ("train_data",), "valid": ("val_data", "valid_data"), "test": ("test_data",)}
# S-DPO prompt files per split: `lastfm-val.json`, `steam-test.json`, `val.json`, ... (JSON or JSON lines, gzip or not).
SDPO_SPLIT_NAMES = {"train": ("train",), "valid": ("val", "valid"), "test": ("test",)}


@dataclass(frozen=True)
class RawDataset:
    """Where a dataset's raw LLaRA files are and how to read them."""

    name: str = field(metadata={"help": "Dataset name (`data build DATASET`)."})
    padding_id: int | None = field(metadata={"help": "The id that pads `seq` (the catalogue size); None: given."})
    catalogue_files: tuple[str, ...] = field(metadata={"help": "Catalogue file names looked for in the raw folder."})
    name_rule: str = field(metadata={"help": "Name rule of the catalogue (`raw.NAME_RULES`)."})


DATASETS = {
    "lastfm": RawDataset("lastfm", 4606, ("id2name.txt",), "llara"),
    "steam": RawDataset("steam", 3581, ("id2name.txt", "steam_id2name.txt"), "llara"),
    "movielens": RawDataset("movielens", 1682, ("u.item", "movielens_u.item"), "movielens"),
    # Any other LLaRA-style split (Goodreads, your own): padding id and catalogue given explicitly.
    "llara": RawDataset("llara", None, (), "llara"),
}

# sha256 of the raw files the papers used, where known. Only LastFM's two are known here: LLaRA's files as copied
# unchanged in public LLaRA follow-up repositories. Steam's and MovieLens' are not (this machine could not fetch
# them), so those files are checked only against `expect_sha256`; their hashes go into the manifest.
PUBLISHED_SHA256 = {
    "lastfm": {
        "train_data.df": "7db71a60d3da4c449091fbc254efc9602f81eec6eb9a60534811ccd61974dbc1",
        "id2name.txt": "b2fb5e6ea624c1d162b80ff2fb09df71c131c9b19549981eeaa4535c89cdb5bb",
    },
}

_RULE_TEXT = {
    "leak_free": "leak_free_candidates: num_candidates - 1 negatives drawn uniformly from the catalogue without the "
    "history and the target, the target at a uniform position, from a stream seeded by (candidate_seed, row, "
    "history), never by the target",
    "papers": "S-DPO: random.seed(target id); random.sample(catalogue ids not in the history and not the target, in "
    "catalogue order, num_candidates - 1) + [target]; random.seed(target id); random.shuffle",
}


class RawFileMismatch(ValueError):
    """A raw file's sha256 differs from the published (or expected) one; the file was not read."""


def sha256_of(path: PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Finding the raw files


@dataclass
class SplitSource:
    """The files a split is built from: a raw table or an S-DPO prompt file, and a prompt file to compare with."""

    split: str
    table: Path | None = None
    prompts: Path | None = None

    @property
    def source(self) -> Path:
        return self.table if self.table is not None else self.prompts


def _listing(raw_dir: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in sorted(raw_dir.iterdir()) if p.is_file()}


def _one(matches: list[Path], what: str, raw_dir: Path) -> Path | None:
    if len(matches) > 1:
        raise ValueError(f"{raw_dir}: several files could be the {what}: {', '.join(p.name for p in matches)}")
    return matches[0] if matches else None


def raw_table_names(dataset: str, split: str) -> set[str]:
    """The lower-cased file names a split's raw table may have: `<stem><suffix>` or `<dataset>_<stem><suffix>`."""
    return {
        f"{prefix}{stem}{suffix}"
        for stem in RAW_SPLIT_STEMS[split]
        for prefix in ("", f"{dataset}_")
        for suffix in FRAME_SUFFIXES
    }


def find_split_sources(raw_dir: PathLike, dataset: str, splits: Sequence[str] = SPLITS) -> dict[str, SplitSource]:
    """The source files of each split found in `raw_dir` (case-insensitive names); splits without one are absent.

    A raw table has a name of `raw_table_names` (the stems of `RAW_SPLIT_STEMS`, the suffixes of
    `raw.FRAME_SUFFIXES`); an S-DPO prompt file is `[<prefix>-]<name>.json[l][.gz]` with the names of
    `SDPO_SPLIT_NAMES`. Raises `ValueError` when several files fit one role.
    """
    raw_dir = Path(raw_dir)
    files = _listing(raw_dir)
    found = {}
    for split in splits:
        names = sorted(raw_table_names(dataset, split))
        table = _one([files[n] for n in names if n in files], f"{split} table", raw_dir)
        pattern = re.compile(rf"^(?:[\w.]+-)?(?:{'|'.join(SDPO_SPLIT_NAMES[split])})\.jsonl?(?:\.gz)?$")
        prompts = _one([p for n, p in files.items() if pattern.match(n)], f"{split} S-DPO prompt file", raw_dir)
        if table is not None or prompts is not None:
            found[split] = SplitSource(split, table, prompts)
    return found


def _find_catalogue(raw_dir: Path, spec: RawDataset, catalogue: PathLike | None) -> Path:
    if catalogue is not None:
        path = Path(catalogue)
        if not path.is_file() and (raw_dir / path).is_file():
            path = raw_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"catalogue {catalogue} not found (also looked in {raw_dir})")
        return path
    if not spec.catalogue_files:
        raise ValueError(f"dataset {spec.name!r} needs the catalogue file (`catalogue`, e.g. id2name.txt)")
    files = _listing(raw_dir)
    matches = [files[name.lower()] for name in spec.catalogue_files if name.lower() in files]
    path = _one(matches, "catalogue", raw_dir)
    if path is None:
        raise FileNotFoundError(f"{raw_dir}: no catalogue ({' or '.join(spec.catalogue_files)}) for {spec.name}")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Building


def _describe(path: Path, raw_dir: Path) -> str:
    try:
        return path.resolve().relative_to(raw_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _check_hashes(
    paths: Sequence[Path], published: Mapping[str, str], given: Mapping[str, str], raw_dir: Path
) -> dict[Path, dict[str, Any]]:
    """sha256 of every source file, refusing one whose name has an expected hash (`given` wins) that differs."""
    names = {path.name for path in paths}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError(
            f"expect_sha256 names {', '.join(unknown)}, which this build does not read (its files: {', '.join(sorted(names))})"
        )
    out = {}
    for path in paths:
        digest = sha256_of(path)
        want = given.get(path.name, published.get(path.name))
        if want is not None and digest != want.lower():
            origin = "the expected (expect_sha256)" if path.name in given else "the published file's"
            raise RawFileMismatch(
                f"{path}: sha256 {digest} differs from {origin} {want.lower()}: refusing to read it. Use the published "
                "file, or state this file's hash with expect_sha256 (check_published=False skips the built-in table)."
            )
        out[path] = {"file": _describe(path, raw_dir), "sha256": digest, "verified": want is not None}
    return out


def _prompt_rows(
    table: RawTable,
    catalogue: RawCatalogue,
    padding_id: int,
    min_history: int,
    rule: str,
    num_candidates: int,
    show_progress: bool,
) -> tuple[list[RecExample], Counter]:
    """The prompts of a raw table (papers' candidate lists, or the target alone for leak-free lists drawn later)."""
    names = catalogue.names
    positions = {item: i for i, item in enumerate(catalogue.ids)}
    dropped: Counter = Counter()
    examples = []
    desc = f"{table.path.name}: prompts"
    for row_no, row in enumerate(tqdm(table.rows, desc=desc, disable=not show_progress)):
        if row.len_seq < min_history:
            dropped[f"len_seq < {min_history}"] += 1
            continue
        history = [item for item in row.seq if item != padding_id]
        for field_name, items in (("seq", history), ("next", [row.next])):
            unknown = next((item for item in items if item not in names), None)
            if unknown is not None:
                what = "the padding id" if unknown == padding_id else f"{unknown}, an id {catalogue.path.name} lacks"
                where = "the target is" if field_name == "next" else "the history holds"
                raise RecDataError(table.path, row_no, field_name, f"{where} {what}", table.line(row_no))
        if not history:
            dropped["no item left once the padding is removed"] += 1
            continue
        target = names[row.next]
        if rule == "papers":
            ids = sdpo_candidates(history, row.next, catalogue.ids, num_candidates, positions=positions)
            candidates = [names[item] for item in ids]
            if len(set(candidates)) < len(candidates):
                # Two ids of one name (MovieLens lists some films twice) drawn together: not a valid prompt.
                dropped["candidate list names one item twice (ids that share a name)"] += 1
                continue
        else:
            candidates = [target]  # replaced by leak_free_candidates
        examples.append(RecExample(history=[names[item] for item in history], candidates=candidates, target=target))
    return examples, dropped


def _compare(built: Sequence[RecExample], reference: Sequence[RecExample], with_candidates: bool) -> dict[str, Any]:
    """How the prompts built match a published prompt file, row by row."""

    def key(ex: RecExample):
        return (ex.history, ex.target, ex.candidates) if with_candidates else (ex.history, ex.target)

    differing = [i for i, (a, b) in enumerate(zip(built, reference)) if key(a) != key(b)]
    differing += range(min(len(built), len(reference)), max(len(built), len(reference)))  # rows only one side has
    return {
        "compared": "history, target, candidates" if with_candidates else "history, target",
        "rows": len(reference),
        "identical": not differing,
        "differing_rows": len(differing),
        "first_differing_row": differing[0] if differing else None,
    }


def build_dataset(
    dataset: str,
    raw_dir: PathLike,
    out_dir: PathLike,
    *,
    candidates: str = "leak_free",
    candidate_seed: int = 0,
    num_candidates: int = NUM_CANDIDATES,
    splits: Sequence[str] = SPLITS,
    padding_id: int | None = None,
    catalogue: PathLike | None = None,
    name_rule: str | None = None,
    min_history: int = MIN_HISTORY,
    expect_sha256: Mapping[str, str] | None = None,
    check_published: bool = True,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Build `train.jsonl.gz`, `valid.jsonl.gz`, `test.jsonl.gz`, `items.txt` and `manifest.json` from raw LLaRA files.

    Args:
        dataset: a key of `DATASETS` (`lastfm`, `steam`, `movielens`, or `llara` for any other LLaRA-style split,
            with `padding_id` and `catalogue`).
        raw_dir: the folder holding the raw files.
        out_dir: where the outputs go (created).
        candidates: `leak_free` (default) or `papers` (S-DPO's rule: the published lists, which leak the target).
        candidate_seed: seed of the leak-free lists (the recipes' `candidate_seed`, 0, redraws the same lists).
        num_candidates: list length, the target included.
        splits: the splits to build; those without a raw file are skipped and listed as missing.
        padding_id: the padding id (default: the dataset's; required for `llara`).
        catalogue: the catalogue file (default: the dataset's, in `raw_dir`; a relative path may be in `raw_dir`).
        name_rule: the catalogue's name rule (`raw.NAME_RULES`; default: the dataset's, `llara` for `llara`).
        min_history: rows with a smaller `len_seq` are dropped (3 in LLaRA and S-DPO).
        expect_sha256: file name -> sha256 for raw files that must match (added to, and winning over, the built-in
            `PUBLISHED_SHA256` table).
        check_published: check the files of `PUBLISHED_SHA256` (LastFM's) against their published hashes.
        show_progress: progress bars.

    Returns:
        The manifest (also written to `out_dir/manifest.json`).

    Raises:
        RawFileMismatch: a raw file's sha256 differs from the expected one (checked before it is read).
        UnsafePickleError: a pickle names a global a DataFrame does not need (nothing is executed).
        RecDataError: a row with a malformed value or an item id outside the catalogue (file, row, column).
        FileNotFoundError / ValueError: no catalogue, no split file at all, or an invalid argument.
    """
    from trl_dynamicpo import __version__

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if candidates not in CANDIDATE_RULES:
        raise ValueError(f"candidates must be one of {CANDIDATE_RULES}; got {candidates!r}")
    unknown_splits = [s for s in splits if s not in SPLITS]
    if unknown_splits or not splits:
        raise ValueError(f"splits must be among {SPLITS}; got {list(splits)}")
    spec = DATASETS[dataset]
    padding_id = spec.padding_id if padding_id is None else padding_id
    if padding_id is None:
        raise ValueError(f"dataset {dataset!r} needs the padding id (`padding_id`: the id that pads `seq`)")
    name_rule = name_rule or spec.name_rule
    if name_rule not in NAME_RULES:
        raise ValueError(f"unknown name rule {name_rule!r}; choose one of {', '.join(NAME_RULES)}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw folder {raw_dir} does not exist")

    catalogue_path = _find_catalogue(raw_dir, spec, catalogue)
    sources = find_split_sources(raw_dir, dataset, splits)
    missing = {
        split: f"no {' / '.join(RAW_SPLIT_STEMS[split])} table ({', '.join(FRAME_SUFFIXES)}) or S-DPO "
        f"{' / '.join(SDPO_SPLIT_NAMES[split])}.json in the raw folder"
        for split in splits
        if split not in sources
    }
    if not sources:
        raise FileNotFoundError(f"{raw_dir}: no raw file for any of the splits {list(splits)}: {missing}")
    for split, why in missing.items():
        logger.warning("%s: split %r is missing (%s); building %s", raw_dir, split, why, ", ".join(sources))

    published = PUBLISHED_SHA256.get(dataset, {}) if check_published else {}
    read_files = [catalogue_path, *(p for s in sources.values() for p in (s.table, s.prompts) if p is not None)]
    hashes = _check_hashes(read_files, published, expect_sha256 or {}, raw_dir)

    raw_catalogue = read_raw_catalogue(catalogue_path, name_rule)
    items = raw_catalogue.unique_names()
    names = [name for _, name in items]
    manifest_sources = [{**hashes[catalogue_path], "role": "catalogue", "rows": raw_catalogue.rows}]

    # Every split is built before anything is written, so a refused or malformed file leaves no partial output.
    built: dict[str, list[RecExample]] = {}
    manifest_splits: dict[str, dict[str, Any]] = {}
    for split, source in sources.items():
        if source.table is not None:
            table = read_raw_table(source.table)
            manifest_sources.append({**hashes[source.table], "role": split, "format": table.format,
                                     "rows": len(table.rows)})  # fmt: skip
            examples, dropped = _prompt_rows(
                table, raw_catalogue, padding_id, min_history, candidates, num_candidates, show_progress
            )
            rows_read = len(table.rows)
        else:
            examples = read_examples(source.prompts, catalogue=names)
            manifest_sources.append({**hashes[source.prompts], "role": split, "format": "sdpo", "rows": len(examples)})
            dropped, rows_read = Counter(), len(examples)
        if candidates == "leak_free":
            examples = leak_free_candidates(
                examples, names, num_candidates=num_candidates, seed=candidate_seed, show_progress=show_progress
            )
        entry: dict[str, Any] = {"source": _describe(source.source, raw_dir), "rows_read": rows_read,
                                 "rows_written": len(examples), "dropped": dict(dropped)}  # fmt: skip
        if source.table is not None and source.prompts is not None:
            reference = read_examples(source.prompts, catalogue=names)
            manifest_sources.append({**hashes[source.prompts], "role": f"{split} reference", "format": "sdpo",
                                     "rows": len(reference)})  # fmt: skip
            entry["reference"] = {
                "file": _describe(source.prompts, raw_dir),
                **_compare(examples, reference, with_candidates=candidates == "papers"),
            }
            if not entry["reference"]["identical"]:
                logger.warning("%s: the prompts built differ from %s: %s", split, source.prompts.name,
                               entry["reference"])  # fmt: skip
        built[split], manifest_splits[split] = examples, entry

    out_dir.mkdir(parents=True, exist_ok=True)
    items_path = out_dir / ITEMS_FILE
    items_path.write_text("".join(f"{item}::{name}\n" for item, name in items), encoding="utf-8")
    for split, examples in built.items():
        output = write_examples(examples, out_dir / OUTPUT_FILES[split])
        manifest_splits[split].update(output=output.name, sha256=sha256_of(output))
        logger.info("%s: %d prompts from %s (%d dropped) -> %s", split, len(examples), sources[split].source.name,
                    sum(manifest_splits[split]["dropped"].values()), output)  # fmt: skip

    manifest = {
        "tool": "trl-dynamicpo data build",
        "package_version": __version__,
        "dataset": dataset,
        "candidates": {
            "rule": candidates,
            "description": _RULE_TEXT[candidates],
            "seed": candidate_seed if candidates == "leak_free" else "the target's item id, per prompt",
            "num_candidates": num_candidates,
        },
        "padding_id": padding_id,
        "min_history": min_history,
        "name_rule": name_rule,
        "sources": manifest_sources,
        "splits": manifest_splits,
        "missing_splits": missing,
        "items": {
            "file": ITEMS_FILE,
            "items": len(items),
            "sha256": sha256_of(items_path),
            "names_shared_by_several_ids": raw_catalogue.shared_names(),
            "names_kept_whole": [raw_catalogue.names[i] for i in raw_catalogue.kept_whole],
        },
    }
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
