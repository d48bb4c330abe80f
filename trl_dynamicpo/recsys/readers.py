"""Read and write recommendation prompts in the S-DPO / LLaRA file format.

One prompt per row, with three fields::

    {"historyList": "Boris::Fever Ray::Fennesz",          # or a JSON list of names
     "itemList": ["Clint Mansell", ..., "I Set My Friends On Fire", ...],   # the candidates
     "trueSelection": "I Set My Friends On Fire"}          # the target, one of the candidates

Files may be a JSON list of such objects or JSON lines, either of them gzip-compressed (detected from the content,
not the file name). Item names can contain colons (`:wumpscut:`, `Welle:Erdball`), so a `::`-joined history is
segmented against the known names (the catalogue when given, and always the row's own candidates and target)
rather than split blindly; see `split_history`.

Row numbers are 0-based record indices, as everywhere in the project: "row 3" is the fourth record (blank lines of
a JSON lines file are not records), `read_examples(path)[3]` when every row is valid. Messages about a file also
give the 1-based line the record starts on: `train.jsonl: row 3 (line 4), field 'itemList': duplicate candidate
'Muse'`.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

HISTORY_KEY = "historyList"
CANDIDATES_KEY = "itemList"
TARGET_KEY = "trueSelection"
SEPARATOR = "::"

PathLike = str | os.PathLike


@dataclass
class RecExample:
    """One recommendation prompt: the user's history (oldest first), the candidate list and the target."""

    history: list[str]
    candidates: list[str]
    target: str

    @property
    def target_index(self) -> int:
        """Position of the target in `candidates`."""
        return self.candidates.index(self.target)

    def to_dict(self, history_as_list: bool = False) -> dict[str, Any]:
        """The row in S-DPO format (`historyList` joined with `::` unless `history_as_list`)."""
        history = list(self.history) if history_as_list else SEPARATOR.join(self.history)
        return {HISTORY_KEY: history, CANDIDATES_KEY: list(self.candidates), TARGET_KEY: self.target}


class RecDataError(ValueError):
    """A malformed row; the message names the file, the row (0-based record index), its line and the field."""

    def __init__(self, path: PathLike, row: int, field: str, message: str, line: int | None = None):
        self.path, self.row, self.field, self.line = str(path), row, field, line
        where = f"row {row}" if line is None else f"row {row} (line {line})"
        super().__init__(f"{path}: {where}, field '{field}': {message}")


# ----------------------------------------------------------------------------------------------------------------
# Catalogue


def read_catalogue(path: PathLike) -> list[str]:
    """Read an `items.txt` catalogue (`id::name` per line) and return the names in file order.

    The id is everything before the first `::`, so names may themselves contain colons. Blank lines are skipped.
    Raises `ValueError` naming the file and line for a line without `::`, an empty name or a repeated name.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            item_id, sep, name = line.partition(SEPARATOR)
            if not sep:
                raise ValueError(f"{path}: line {line_no}: expected 'id::name', got {line!r}")
            if not name:
                raise ValueError(f"{path}: line {line_no}: empty item name for id {item_id!r}")
            if name in seen:
                raise ValueError(f"{path}: line {line_no}: item name {name!r} already given on line {seen[name]}")
            seen[name] = line_no
            names.append(name)
    return names


def _as_name_set(catalogue: PathLike | Iterable[str] | None) -> frozenset[str] | set[str] | None:
    if catalogue is None:
        return None
    if isinstance(catalogue, (str, os.PathLike)):
        return frozenset(read_catalogue(catalogue))
    if isinstance(catalogue, (set, frozenset)):
        return catalogue
    return frozenset(catalogue)


# ----------------------------------------------------------------------------------------------------------------
# History segmentation


def split_history(text: str, is_known: Callable[[str], bool] | Collection[str] | None = None) -> list[str]:
    """Split a `::`-joined history into item names, using the known names to resolve colons inside names.

    When every piece of the plain `text.split("::")` is known (or nothing is known), that split is returned.
    Otherwise the string is segmented by dynamic programming over every (possibly overlapping) `::` occurrence,
    choosing the segmentation whose unknown names cover the fewest characters (each unknown name costs its length
    plus one, so unknown names are never merged across a `::`). For example, with `:wumpscut:` known,
    `":wumpscut:::And One"` gives `[":wumpscut:", "And One"]` where a plain split gives `[":wumpscut", ":And One"]`.
    """
    pieces = text.split(SEPARATOR)
    if is_known is None:
        return pieces
    known = is_known if callable(is_known) else is_known.__contains__
    if all(known(piece) for piece in pieces):
        return pieces
    return _segment(text, known)


def _segment(text: str, known: Callable[[str], bool]) -> list[str]:
    n = len(text)
    delimiters = [i for i in range(n - 1) if text.startswith(SEPARATOR, i)]
    # best[s] = (cost, -segments, names) of the best segmentation of text[s:], filled from the right.
    best: dict[int, tuple[int, int, list[str]]] = {}
    starts = sorted({0, *(d + len(SEPARATOR) for d in delimiters)}, reverse=True)
    for start in starts:
        tail = text[start:]
        candidates = [(0 if known(tail) and tail else len(tail) + 1, -1, [tail])]
        for d in delimiters:
            nxt = d + len(SEPARATOR)
            if d < start or nxt not in best:
                continue
            name = text[start:d]
            cost = 0 if name and known(name) else len(name) + 1
            rest_cost, rest_neg, rest = best[nxt]
            candidates.append((cost + rest_cost, rest_neg - 1, [name, *rest]))
        best[start] = min(candidates, key=lambda c: (c[0], c[1]))
    return best[0][2]


# ----------------------------------------------------------------------------------------------------------------
# Examples


def read_examples(
    path: PathLike,
    catalogue: PathLike | Iterable[str] | None = None,
    drop_invalid_rows: bool = False,
    unknown_items: str = "warn",
) -> list[RecExample]:
    """Read S-DPO-format prompts from a JSON list or JSON lines file, plain or gzip-compressed.

    Args:
        path: the file.
        catalogue: item names (or the path of an `items.txt`) used to segment `::`-joined histories whose names
            contain colons, and to report names it does not hold. Without it the row's own candidates and target
            are still used, and other names fall back to a plain split.
        drop_invalid_rows: skip malformed rows (logging how many, per field, and the first) instead of raising.
        unknown_items: what a history, candidate or target name missing from the catalogue does: "warn" (the
            default) keeps the row and logs how many rows name such items, with examples (the public LastFM
            validation file names an artist "Plus 44" where the catalogue and the training file say "+44");
            "error" makes the row a bad row (raised, or skipped and counted with `drop_invalid_rows`).

    Returns:
        One `RecExample` per valid row, in file order.

    Raises:
        ValueError (`RecDataError`): for a row that is not valid JSON or not an object, misses a field, has a field
            of the wrong type, an empty history, an empty or duplicated candidate list, a target that is not among
            its candidates (or, with `unknown_items="error"`, an item outside the catalogue); the message names the
            file, the row (0-based record index), its line and the field. A JSON list that does not parse raises
            `ValueError` naming the line and column.
    """
    if unknown_items not in ("warn", "error"):
        raise ValueError(f"unknown_items must be 'warn' or 'error'; got {unknown_items!r}.")
    names = _as_name_set(catalogue)
    names_with_separator = names is not None and any(SEPARATOR in name for name in names)
    examples: list[RecExample] = []
    errors: list[RecDataError] = []
    unknown: dict[str, list[tuple[int, int, str]]] = {}  # name -> (row, line, field) of every row naming it
    rows = 0
    for row_no, line_no, row in _iter_rows(path):
        rows += 1
        try:
            if isinstance(row, RecDataError):
                raise row
            example = _parse_row(path, row_no, line_no, row, names, names_with_separator)
            if names is not None:
                missing = _unknown_names(example, names)
                if missing and unknown_items == "error":
                    field, name = missing[0]
                    raise RecDataError(path, row_no, field, f"item {name!r} is not in the catalogue", line_no)
                for field, name in missing:
                    unknown.setdefault(name, []).append((row_no, line_no, field))
            examples.append(example)
        except RecDataError as err:
            if not drop_invalid_rows:
                raise
            errors.append(err)
    if errors:
        per_field = ", ".join(f"{field}: {count}" for field, count in Counter(e.field for e in errors).most_common())
        logger.warning("%s: skipped %d bad row(s) of %d (%s); first: %s", path, len(errors), rows, per_field, errors[0])
    if unknown:
        logger.warning("%s: %s", path, _describe_unknown(unknown, rows))
    return examples


def _unknown_names(example: RecExample, names: Collection[str]) -> list[tuple[str, str]]:
    """(field, name) for each distinct name of the row that is not in `names`, in field order."""
    seen: set[str] = set()
    missing = []
    for field, items in ((HISTORY_KEY, example.history), (CANDIDATES_KEY, example.candidates),
                         (TARGET_KEY, (example.target,))):  # fmt: skip
        for name in items:
            if name not in names and name not in seen:
                seen.add(name)
                missing.append((field, name))
    return missing


def _describe_unknown(unknown: dict[str, list[tuple[int, int, str]]], rows: int, shown: int = 5) -> str:
    affected = len({row for places in unknown.values() for row, _, _ in places})
    ranked = sorted(unknown.items(), key=lambda kv: (-len(kv[1]), kv[1][0][0]))
    examples = []
    for name, places in ranked[:shown]:
        row, line, field = places[0]
        examples.append(f"{name!r} in {len(places)} row(s), first row {row} (line {line}), field '{field}'")
    more = f"; and {len(ranked) - shown} more" if len(ranked) > shown else ""
    return (
        f"{affected} of {rows} row(s) name {len(unknown)} item(s) that are not in the catalogue (rows kept as they "
        f"are): {'; '.join(examples)}{more}"
    )


def _parse_row(
    path: PathLike,
    row_no: int,
    line_no: int,
    row: Any,
    names: frozenset[str] | set[str] | None,
    names_with_separator: bool,
) -> RecExample:
    def bad(field: str, message: str) -> RecDataError:
        return RecDataError(path, row_no, field, message, line_no)

    if not isinstance(row, dict):
        raise bad("(row)", f"expected a JSON object, got {type(row).__name__}")
    for key in (HISTORY_KEY, CANDIDATES_KEY, TARGET_KEY):
        if key not in row:
            raise bad(key, "missing field")

    candidates = row[CANDIDATES_KEY]
    if not isinstance(candidates, list) or not set(map(type, candidates)) <= {str}:
        raise bad(CANDIDATES_KEY, f"expected a list of item names, got {_short(candidates)}")
    if not candidates:
        raise bad(CANDIDATES_KEY, "empty candidate list")
    row_names = set(candidates)
    if "" in row_names:
        raise bad(CANDIDATES_KEY, "empty item name")
    if len(row_names) != len(candidates):
        seen: set[str] = set()
        dup = next(c for c in candidates if c in seen or seen.add(c))
        raise bad(CANDIDATES_KEY, f"duplicate candidate {dup!r}")

    target = row[TARGET_KEY]
    if not isinstance(target, str) or not target:
        raise bad(TARGET_KEY, f"expected a non-empty item name, got {_short(target)}")
    if target not in row_names:
        raise bad(TARGET_KEY, f"target {target!r} is not among the {len(candidates)} candidates")

    raw_history = row[HISTORY_KEY]
    if isinstance(raw_history, str):
        if not raw_history:
            raise bad(HISTORY_KEY, "empty history")
        history = raw_history.split(SEPARATOR)
        # A plain split can only be wrong when some name contains '::' or begins/ends with ':' next to a
        # separator (which puts ':::' in the text). Otherwise every '::' must be a separator.
        if ":::" in raw_history or names_with_separator or SEPARATOR in "\x00".join(candidates):
            missing = set(history).difference(names) if names is not None else set(history)
            if not missing <= row_names:
                if names is None:
                    history = _segment(raw_history, row_names.__contains__)
                else:
                    history = _segment(raw_history, lambda name: name in names or name in row_names)
    elif isinstance(raw_history, list):
        history = raw_history
    else:
        raise bad(HISTORY_KEY, f"expected a '::'-joined string or a list of item names, got {_short(raw_history)}")
    if not history:
        raise bad(HISTORY_KEY, "empty history")
    if not set(map(type, history)) <= {str} or "" in history:
        raise bad(HISTORY_KEY, f"empty or non-string item name in {_short(raw_history)}")
    return RecExample(history=list(history), candidates=list(candidates), target=target)


def _short(value: Any, limit: int = 60) -> str:
    """`value`'s JSON type and a short rendering of it, for error messages."""
    kind = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__ if value is not None else "null"
    )
    text = json.dumps(value, ensure_ascii=False)
    return f"{kind} {text if len(text) <= limit else text[: limit - 3] + '...'}"


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _iter_rows(path: PathLike) -> Iterator[tuple[int, int, Any]]:
    """Yield (0-based row, 1-based line, decoded row or RecDataError) for a JSON list or JSON lines file."""
    with _open_text(path) as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        yield from _iter_json_list(path, text)
        return
    row = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield row, line_no, json.loads(line)
        except json.JSONDecodeError as err:
            yield row, line_no, RecDataError(path, row, "(json)", f"invalid JSON: {err.msg} at column {err.colno}", line_no)
        row += 1


def _iter_json_list(path: PathLike, text: str) -> Iterator[tuple[int, int, Any]]:
    """The elements of a JSON list with their index and the line each starts on (a parse error stops the file)."""
    decoder = json.JSONDecoder()
    pos = _WHITESPACE.match(text).end() + 1  # after '['
    line, counted = 1, 0
    row = 0
    try:
        pos = _WHITESPACE.match(text, pos).end()
        if text.startswith("]", pos):
            pos += 1
        else:
            while True:
                line += text.count("\n", counted, pos)
                counted = pos
                value, pos = decoder.raw_decode(text, pos)
                yield row, line, value
                row += 1
                pos = _WHITESPACE.match(text, pos).end()
                if text.startswith(",", pos):
                    pos = _WHITESPACE.match(text, pos + 1).end()
                elif text.startswith("]", pos):
                    pos += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        if _WHITESPACE.match(text, pos).end() != len(text):
            raise json.JSONDecodeError("Extra data", text, pos)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: invalid JSON list at row {row} (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from err


def _open_text(path: PathLike) -> io.TextIOBase:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")  # a byte-order mark is not part of the first row


def write_examples(examples: Iterable[RecExample], path: PathLike, *, history_as_list: bool = False) -> Path:
    """Write prompts as JSON lines in S-DPO format (gzip-compressed when `path` ends with `.gz`).

    `historyList` is `::`-joined (as in the public files) unless `history_as_list`; read such files back with the
    catalogue to recover names that contain colons. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(ex.to_dict(history_as_list), ensure_ascii=False) + "\n" for ex in examples)
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes reproducible.
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
            handle.write(lines.encode("utf-8"))
    else:
        path.write_text(lines, encoding="utf-8")
    return path
