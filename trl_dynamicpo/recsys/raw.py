"""LLaRA's raw files: the per-split sequence tables and the item catalogues, read without trusting them.

A LLaRA split (`train_data.df`, `Val_data.df`, `Test_data.df`) is a table with one row per prompt:

- `seq`: the user's last items (oldest first), padded at the end to a fixed length with the padding id (the
  catalogue size: 4606 for LastFM, 3581 for Steam, 1682 for MovieLens);
- `len_seq`: how many of them are real items (an all-padding row says 1);
- `next`: the item the user picked next, the target.

MovieLens items are `(id, rating)` tuples, padding `(1682, 0)`; only the id is kept. LLaRA publishes the tables
as pandas pickles, read here with `safe_pickle.load_dataframe_pickle` (which refuses any pickle naming a global
outside a DataFrame's constructors); the same columns as CSV (lists written as `[1, 2, 3]`), Parquet or JSON lines
are read too.

A catalogue maps ids to names. The name rules are LLaRA's and S-DPO's (`data/*_data.py` of both repositories), so
that the names are the ones their prompts show:

- `llara` (LastFM, Steam): `id::name` lines; the name ends at the next `::` and is stripped, which cuts Steam's
  `Half-Life 2 :: Episode One` to `Half-Life 2`;
- `goodreads`: as `llara`, then cut at the first `(` (`Dune (Dune, #1)` -> `Dune`);
- `movielens`: MovieLens' `u.item` (`id|title|date|...`, ISO-8859-1), id minus 1, the title without its last
  7 characters (` (1995)`), then the first of `, The`, `, A`, `, An` found anywhere in it removed (every
  occurrence) and its article put in front. As in LLaRA, `, A` is tested before `, An`, so `Affair to Remember, An`
  becomes `A Affair to Remembern`: these are the names the papers' prompts hold.

A rule that leaves an empty name (MovieLens' `unknown` title has no year to cut; a Goodreads title starting with
`(`) keeps the whole stripped name instead (LLaRA would show an empty name); `RawCatalogue.kept_whole` lists them.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .readers import SEPARATOR, RecDataError


PathLike = str | os.PathLike
COLUMNS = ("seq", "len_seq", "next")
PICKLE_SUFFIXES = (".df", ".pkl", ".pickle")
FRAME_SUFFIXES = (*PICKLE_SUFFIXES, ".parquet", ".csv", ".jsonl", ".jsonl.gz", ".json", ".json.gz")


@dataclass
class RawRow:
    """One row of a LLaRA split: item ids as in the file (padding included), `len_seq` and the target id."""

    seq: list[int]
    len_seq: int
    next: int


@dataclass
class RawTable:
    """A LLaRA split as read: its rows, the file and the format it came from."""

    path: Path
    format: str
    rows: list[RawRow]
    # 1-based line of each row for text formats (CSV: the header is line 1), None for pickle / Parquet.
    lines: list[int] | None = None

    def line(self, row: int) -> int | None:
        """The 1-based line of `row` in the file, None for binary formats."""
        return None if self.lines is None else self.lines[row]


# ----------------------------------------------------------------------------------------------------------------
# Split tables


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(FRAME_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix.lower())


def _item_id(value: Any, path: Path, row: int, column: str, line: int | None) -> int:
    """An item id from an int (numpy ints included) or an `(id, rating)` pair (MovieLens)."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    elif hasattr(value, "tolist") and not isinstance(value, (int, float)):
        value = value.tolist()
        if isinstance(value, list) and value:
            value = value[0]
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise RecDataError(path, row, column, f"expected an item id (int) or an (id, rating) pair, got {value!r}", line)
    return int(value.__index__())


def _row(path: Path, row: int, record: dict[str, Any], line: int | None = None) -> RawRow:
    for column in COLUMNS:
        if column not in record:
            raise RecDataError(path, row, column, "missing column", line)
    seq = record["seq"]
    if hasattr(seq, "tolist"):  # numpy arrays (Parquet lists, object columns)
        seq = seq.tolist()
    if not isinstance(seq, (list, tuple)):
        raise RecDataError(path, row, "seq", f"expected a list of item ids, got {type(seq).__name__}", line)
    len_seq = record["len_seq"]
    if isinstance(len_seq, bool) or not hasattr(len_seq, "__index__"):
        raise RecDataError(path, row, "len_seq", f"expected an integer, got {len_seq!r}", line)
    return RawRow(
        seq=[_item_id(item, path, row, "seq", line) for item in seq],
        len_seq=int(len_seq.__index__()),
        next=_item_id(record["next"], path, row, "next", line),
    )


def _frame_rows(path: Path, frame) -> list[RawRow]:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} (columns: {list(frame.columns)})")
    columns = {c: frame[c].tolist() for c in COLUMNS}
    return [_row(path, i, {c: columns[c][i] for c in COLUMNS}) for i in range(len(frame))]


def _literal(path: Path, row: int, column: str, text: str, line: int) -> Any:
    """A CSV cell: a number, or a list / tuple written as a Python or JSON literal (parsed, never evaluated)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as err:
        raise RecDataError(path, row, column, f"not a number or a list literal: {text[:60]!r}", line) from err


def _csv_rows(path: Path) -> tuple[list[RawRow], list[int]]:
    rows, lines = [], []
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: no column {', '.join(map(repr, missing))} (header: {reader.fieldnames})")
        for record in reader:
            row, line = len(rows), reader.line_num
            values = {c: _literal(path, row, c, record[c] or "", line) for c in COLUMNS}
            rows.append(_row(path, row, values, line))
            lines.append(line)
    return rows, lines


def _json_rows(path: Path) -> tuple[list[RawRow], list[int]]:
    rows, lines = [], []
    with _open_text(path) as handle:
        for line_no, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            row = len(rows)
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise RecDataError(path, row, "(json)", f"invalid JSON: {err.msg} at column {err.colno}", line_no) from err
            if not isinstance(record, dict):
                raise RecDataError(path, row, "(row)", f"expected a JSON object, got {type(record).__name__}", line_no)
            rows.append(_row(path, row, record, line_no))
            lines.append(line_no)
    return rows, lines


def _open_text(path: Path, encoding: str = "utf-8-sig") -> io.TextIOBase:
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def read_raw_table(path: PathLike) -> RawTable:
    """Read a LLaRA split table (columns `seq`, `len_seq`, `next`) from a DataFrame pickle, CSV, Parquet or JSON lines.

    The format comes from the suffix: `.df` / `.pkl` / `.pickle` (read with the restricted unpickler: a pickle
    naming any global a DataFrame does not need is refused before anything runs), `.parquet`, `.csv` (lists as
    `[1, 2, 3]` or `[(1, 5), ...]` literals) and `.jsonl` / `.json` (one object per line, optionally gzip).

    Raises:
        UnsafePickleError: for a pickle that names a refused global.
        RecDataError: for a row with a missing or malformed value (file, row, line when known, column).
        ValueError: for a file without the three columns or of an unknown format.
    """
    from .safe_pickle import load_dataframe_pickle

    path = Path(path)
    suffix = _suffix(path)
    if suffix in PICKLE_SUFFIXES:
        return RawTable(path, "pickle", _frame_rows(path, load_dataframe_pickle(path)))
    if suffix == ".parquet":
        import pandas as pd

        return RawTable(path, "parquet", _frame_rows(path, pd.read_parquet(path)))
    if suffix == ".csv":
        rows, lines = _csv_rows(path)
        return RawTable(path, "csv", rows, lines)
    if suffix in (".jsonl", ".jsonl.gz", ".json", ".json.gz"):
        rows, lines = _json_rows(path)
        return RawTable(path, "jsonl", rows, lines)
    raise ValueError(f"{path}: unknown table format {suffix!r}; expected one of {', '.join(FRAME_SUFFIXES)}")


# ----------------------------------------------------------------------------------------------------------------
# Catalogues and name rules


def llara_name(text: str) -> str:
    """LLaRA's name of an `id::name` line's text after the id: up to the next `::`, stripped (LastFM, Steam)."""
    return text.split(SEPARATOR)[0].strip()


def goodreads_name(text: str) -> str:
    """S-DPO's Goodreads name: `llara_name`, then cut at the first `(` (`Dune (Dune, #1)` -> `Dune`)."""
    return llara_name(text).split("(")[0].strip()


MOVIELENS_ARTICLES = (", The", ", A", ", An")


def movielens_title(title: str) -> str:
    """LLaRA's MovieLens name of a `u.item` title: the last 7 characters (` (1995)`) cut, then the first article
    suffix of `MOVIELENS_ARTICLES` found anywhere removed and put in front (`Usual Suspects, The (1995)` -> `The
    Usual Suspects`; `, A` is tested before `, An`, as in LLaRA)."""
    title = title[:-7]
    for suffix in MOVIELENS_ARTICLES:
        if suffix in title:
            return suffix[2:] + " " + title.replace(suffix, "")
    return title


@dataclass(frozen=True)
class NameRule:
    """How a catalogue file is laid out and how its names are cleaned."""

    separator: str = field(metadata={"help": "Between the id and the name field."})
    clean: Callable[[str], str] = field(metadata={"help": "The dataset's name rule, applied to the name field."})
    encoding: str = field(default="utf-8-sig", metadata={"help": "Text encoding of the file."})
    id_offset: int = field(default=0, metadata={"help": "Added to the file's id (MovieLens ids start at 1)."})
    name_field: int | None = field(
        default=None,
        metadata={"help": "Which field after the id holds the name (split on the separator); None: all the rest."},
    )


NAME_RULES = {
    "llara": NameRule(separator=SEPARATOR, clean=llara_name),
    "goodreads": NameRule(separator=SEPARATOR, clean=goodreads_name),
    "movielens": NameRule(separator="|", clean=movielens_title, encoding="iso-8859-1", id_offset=-1, name_field=0),
}


@dataclass
class RawCatalogue:
    """Item ids in file order and their names after the name rule."""

    path: Path
    rule: str
    ids: list[int]
    names: dict[int, str]
    rows: int = 0
    # Ids whose rule left an empty name and which keep their whole stripped name.
    kept_whole: list[int] = field(default_factory=list)

    def unique_names(self) -> list[tuple[int, str]]:
        """(first id, name) for every distinct name, in file order: the lines of the `items.txt` written."""
        seen: dict[str, int] = {}
        for item in self.ids:
            seen.setdefault(self.names[item], item)
        return [(item, name) for name, item in seen.items()]

    def shared_names(self) -> dict[str, list[int]]:
        """Names that several ids share (MovieLens lists a few films twice), with their ids."""
        by_name: dict[str, list[int]] = {}
        for item in self.ids:
            by_name.setdefault(self.names[item], []).append(item)
        return {name: ids for name, ids in by_name.items() if len(ids) > 1}


def _catalogue_lines(path: Path, rule: NameRule) -> Iterator[tuple[int, str]]:
    with _open_text(path, rule.encoding) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield line_no, line


def read_raw_catalogue(path: PathLike, rule: str = "llara") -> RawCatalogue:
    """Read a LLaRA catalogue (`id2name.txt`, MovieLens `u.item`) with the name rule `rule` (see `NAME_RULES`).

    Raises:
        ValueError: naming the file and line for a line without an integer id and a name, or a repeated id.
    """
    if rule not in NAME_RULES:
        raise ValueError(f"unknown name rule {rule!r}; choose one of {sorted(NAME_RULES)}")
    spec = NAME_RULES[rule]
    path = Path(path)
    catalogue = RawCatalogue(path=path, rule=rule, ids=[], names={})
    where: dict[int, int] = {}
    for line_no, line in _catalogue_lines(path, spec):
        catalogue.rows += 1
        item, sep, rest = line.partition(spec.separator)
        if not sep:
            raise ValueError(f"{path}: line {line_no}: expected 'id{spec.separator}name', got {line!r}")
        try:
            item_id = int(item) + spec.id_offset
        except ValueError:
            raise ValueError(f"{path}: line {line_no}: the id {item!r} is not an integer") from None
        text = rest if spec.name_field is None else rest.split(spec.separator)[spec.name_field]
        name = spec.clean(text)
        if not name:
            name = text.strip()
            catalogue.kept_whole.append(item_id)
        if not name:
            raise ValueError(f"{path}: line {line_no}: empty item name for id {item!r}")
        if item_id in where:
            raise ValueError(f"{path}: line {line_no}: id {item!r} already given on line {where[item_id]}")
        where[item_id] = line_no
        catalogue.ids.append(item_id)
        catalogue.names[item_id] = name
    return catalogue
