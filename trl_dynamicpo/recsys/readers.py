"""Read and write recommendation prompts in the S-DPO / LLaRA file format.

One prompt per row, with three fields::

    {"historyList": "Boris::Fever Ray::Fennesz",          # or a JSON list of names
     "itemList": ["Clint Mansell", ..., "I Set My Friends On Fire", ...],   # the candidates
     "trueSelection": "I Set My Friends On Fire"}          # the target, one of the candidates

Files may be a JSON list of such objects or JSON lines, either of them gzip-compressed (detected from the content,
not the file name). Item names can contain colons (`:wumpscut:`, `Welle:Erdball`), so a `::`-joined history is
segmented against the known names (the catalogue when given, and always the row's own candidates and target)
rather than split blindly; see `split_history`.

Row numbers in error messages are 1-based: the line number for JSON lines, the element number for a JSON list.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
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
    """A malformed row; the message names the file, the 1-based row number and the field."""

    def __init__(self, path: PathLike, row: int, field: str, message: str):
        self.path, self.row, self.field = str(path), row, field
        super().__init__(f"{path}: row {row}, field '{field}': {message}")


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
    skip_bad_rows: bool = False,
) -> list[RecExample]:
    """Read S-DPO-format prompts from a JSON list or JSON lines file, plain or gzip-compressed.

    Args:
        path: the file.
        catalogue: item names (or the path of an `items.txt`) used to segment `::`-joined histories whose names
            contain colons. Without it the row's own candidates and target are still used, and other names fall
            back to a plain split. Names not in the catalogue are kept as they are (the public LastFM validation
            file names two artists differently from its catalogue).
        skip_bad_rows: skip malformed rows (logging how many) instead of raising.

    Returns:
        One `RecExample` per valid row, in file order.

    Raises:
        ValueError (`RecDataError`): for a row that is not valid JSON or not an object, misses a field, has an
            empty history, an empty or duplicated candidate list, or a target that is not among its candidates;
            the message names the file, the 1-based row number and the field.
    """
    names = _as_name_set(catalogue)
    names_with_separator = names is not None and any(SEPARATOR in name for name in names)
    examples: list[RecExample] = []
    errors: list[RecDataError] = []
    for row_no, row in _iter_rows(path):
        try:
            if isinstance(row, RecDataError):
                raise row
            examples.append(_parse_row(path, row_no, row, names, names_with_separator))
        except RecDataError as err:
            if not skip_bad_rows:
                raise
            errors.append(err)
    if errors:
        logger.warning("%s: skipped %d bad row(s); first: %s", path, len(errors), errors[0])
    return examples


def _parse_row(
    path: PathLike, row_no: int, row: Any, names: frozenset[str] | set[str] | None, names_with_separator: bool
) -> RecExample:
    if not isinstance(row, dict):
        raise RecDataError(path, row_no, "(row)", f"expected a JSON object, got {type(row).__name__}")
    for key in (HISTORY_KEY, CANDIDATES_KEY, TARGET_KEY):
        if key not in row:
            raise RecDataError(path, row_no, key, "missing field")

    candidates = row[CANDIDATES_KEY]
    if not isinstance(candidates, list) or not set(map(type, candidates)) <= {str}:
        raise RecDataError(path, row_no, CANDIDATES_KEY, "expected a list of item names")
    if not candidates:
        raise RecDataError(path, row_no, CANDIDATES_KEY, "empty candidate list")
    row_names = set(candidates)
    if "" in row_names:
        raise RecDataError(path, row_no, CANDIDATES_KEY, "empty item name")
    if len(row_names) != len(candidates):
        seen: set[str] = set()
        dup = next(c for c in candidates if c in seen or seen.add(c))
        raise RecDataError(path, row_no, CANDIDATES_KEY, f"duplicate candidate {dup!r}")

    target = row[TARGET_KEY]
    if not isinstance(target, str) or not target:
        raise RecDataError(path, row_no, TARGET_KEY, "expected a non-empty item name")
    if target not in row_names:
        raise RecDataError(
            path, row_no, TARGET_KEY, f"target {target!r} is not among the {len(candidates)} candidates"
        )

    raw_history = row[HISTORY_KEY]
    if isinstance(raw_history, str):
        if not raw_history:
            raise RecDataError(path, row_no, HISTORY_KEY, "empty history")
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
        raise RecDataError(path, row_no, HISTORY_KEY, f"expected a '::'-joined string or a list, got {raw_history!r}")
    if not history:
        raise RecDataError(path, row_no, HISTORY_KEY, "empty history")
    if not set(map(type, history)) <= {str} or "" in history:
        raise RecDataError(path, row_no, HISTORY_KEY, f"empty or non-string item name in {raw_history!r}")
    return RecExample(history=list(history), candidates=list(candidates), target=target)


def _iter_rows(path: PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (1-based row number, decoded row or RecDataError) for a JSON list or JSON lines file."""
    with _open_text(path) as handle:
        text = handle.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON list (line {err.lineno}, column {err.colno}): {err.msg}") from err
        yield from enumerate(rows, start=1)
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as err:
            yield line_no, RecDataError(path, line_no, "(json)", f"invalid JSON: {err.msg} at column {err.colno}")


def _open_text(path: PathLike) -> io.TextIOBase:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


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
