"""Load a pandas DataFrame pickle without trusting it.

`pickle` (and so `pandas.read_pickle`) calls whatever callables a file names, so a downloaded `train_data.df` can
run any code. A DataFrame of ints, lists and strings needs only a handful of pandas / numpy constructors
(`ALLOWED_GLOBALS`), so a pickle is read in two passes:

1. `pickle_globals` lists every global the file names by walking its opcodes with `pickletools.genops`, which
   decodes the byte stream and executes nothing. A file that names any other global (`posix.system`,
   `builtins.eval`, `subprocess.Popen`, ...), an extension-registry code or a persistent id is refused with
   `UnsafePickleError` naming it, before anything is unpickled.
2. `load_dataframe_pickle` unpickles with an `Unpickler` whose `find_class` returns only allowed globals, so even a
   global the first pass could not resolve (a name built on the stack) cannot be reached.

The allowed globals are those of LLaRA's `train_data.df` (written by pandas 1.x / numpy 1.x: protocol 5,
`_unpickle_block`, `RangeIndex`), their numpy 2 / pandas 3 locations (`numpy._core`, `pandas.DataFrame`), and the
renames pandas' own pickle compatibility maps to them (`Int64Index` -> `Index`, `new_block` -> `_unpickle_block`).
Not allowed: pandas 3's Arrow-backed string columns and labels (`ArrowStringArray`, `pyarrow.lib._restore_array`,
which rebuild arrays from raw buffers); save such a frame as Parquet, or with object-dtype labels.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from collections.abc import Iterable
from importlib import import_module
from typing import Any


# The globals a DataFrame pickle of ints, lists and strings names (module, name); every other one is refused.
ALLOWED_GLOBALS = frozenset(
    {
        ("pandas.core.frame", "DataFrame"),
        ("pandas", "DataFrame"),  # pandas 3 pickles its public classes under their `pandas.` names
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas", "Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas", "RangeIndex"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "slice"),
    }
)
# Older pandas locations of allowed globals (the subset of pandas.compat.pickle_compat's map that applies here).
RENAMED_GLOBALS = {
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
}

_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MARK = object()  # a MARK on the simulated stack
_OTHER = object()  # any value the simulation does not track


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle names a global outside `ALLOWED_GLOBALS` (or one that cannot be resolved); nothing was run."""

    def __init__(self, path: str | os.PathLike, refused: Iterable[str]):
        self.path = str(path)
        self.refused = sorted(set(refused))
        super().__init__(
            f"{path}: refusing to unpickle: it names {', '.join(self.refused)}, which a DataFrame of ints, lists "
            "and strings does not need (nothing was executed). Only pandas / numpy DataFrame constructors are "
            "allowed (trl_dynamicpo.recsys.safe_pickle.ALLOWED_GLOBALS); if you trust the file, convert it to "
            "CSV, Parquet or JSON lines with the columns seq, len_seq, next."
        )


def _global_name(module: str, name: str) -> str:
    return f"{module}.{name}"


def pickle_globals(data: bytes) -> list[str]:
    """Every global the pickle `data` names, as 'module.name', in order of first appearance; executes nothing.

    The opcodes are walked with `pickletools.genops` on a simulated stack that tracks only strings, so
    `STACK_GLOBAL` (protocol 4+) is resolved from the two strings below it, memoized or not. A global that cannot
    be resolved that way is reported as '<unresolved STACK_GLOBAL at byte N>', an extension-registry code as
    '<extension code N>' and a persistent id as '<persistent id at byte N>': none of them occurs in a pickle that
    pandas writes.
    """
    return list(_scan(data))


def _scan(data: bytes) -> dict[str, tuple[str, str] | None]:
    """'module.name' -> (module, name) of every global `data` names; None for what is not a plain global."""
    found: dict[str, tuple[str, str] | None] = {}
    stack: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, pos in pickletools.genops(data):
        name = op.name
        if name in _STRING_OPS:
            stack.append(arg if isinstance(arg, str) else _OTHER)
        elif name in _GET_OPS:
            stack.append(memo.get(arg, _OTHER))
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _OTHER
        elif name in _PUT_OPS:
            memo[arg] = stack[-1] if stack else _OTHER
        elif name == "DUP":
            stack.append(stack[-1] if stack else _OTHER)
        elif name == "STACK_GLOBAL":
            item = stack.pop() if stack else _OTHER
            module = stack.pop() if stack else _OTHER
            if isinstance(module, str) and isinstance(item, str):
                found[_global_name(module, item)] = (module, item)
            else:
                found[f"<unresolved STACK_GLOBAL at byte {pos}>"] = None
            stack.append(_OTHER)
        else:
            if name in ("GLOBAL", "INST"):
                module, _, item = arg.partition(" ")
                found[_global_name(module, item)] = (module, item)
            elif name in ("EXT1", "EXT2", "EXT4"):
                found[f"<extension code {arg}>"] = None
            elif name in ("PERSID", "BINPERSID"):
                found[f"<persistent id at byte {pos}>"] = None
            before = op.stack_before
            if pickletools.markobject in before:
                while stack and stack.pop() is not _MARK:
                    pass
                count = before.index(pickletools.markobject)
            else:
                count = len(before)
            del stack[max(0, len(stack) - count) :]
            stack.extend(_MARK if item is pickletools.markobject else _OTHER for item in op.stack_after)
    return found


def _allowed(module: str, name: str) -> tuple[str, str] | None:
    """The (module, name) to import for an allowed global, None for a refused one."""
    key = RENAMED_GLOBALS.get((module, name), (module, name))
    return key if key in ALLOWED_GLOBALS else None


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only `ALLOWED_GLOBALS` and refuses persistent ids."""

    def __init__(self, file, path: str | os.PathLike = "<pickle>"):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        key = _allowed(module, name)
        if key is None:
            raise UnsafePickleError(self._path, [_global_name(module, name)])
        module, name = key
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core.") :]  # numpy 2 moved numpy.core (and warns on it)
            try:
                return getattr(import_module(module), name)
            except ImportError:  # numpy 1
                module = "numpy.core." + module[len("numpy._core.") :]
        return getattr(import_module(module), name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self._path, [f"<persistent id {pid!r}>"])


def load_dataframe_pickle(path: str | os.PathLike):
    """Read a pandas DataFrame pickle, refusing (`UnsafePickleError`) any that names a global outside
    `ALLOWED_GLOBALS`; the check runs before anything is unpickled, so a refused file runs nothing.

    Raises:
        UnsafePickleError: the file names a refused global (the message names it).
        ValueError: the file is not a pickle, or holds something other than a DataFrame.
    """
    import pandas as pd

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        names = _scan(data)
    except (ValueError, EOFError) as err:  # genops' errors on a truncated or non-pickle stream
        raise ValueError(f"{path}: not a readable pickle ({err})") from err
    refused = [label for label, key in names.items() if key is None or _allowed(*key) is None]
    if refused:
        raise UnsafePickleError(path, refused)
    frame = RestrictedUnpickler(io.BytesIO(data), path).load()
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{path}: the pickle holds a {type(frame).__name__}, not a pandas DataFrame")
    return frame
