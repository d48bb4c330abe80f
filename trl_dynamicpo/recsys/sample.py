"""The LastFM sample bundled with the package (`trl_dynamicpo/data/lastfm_sample/`), for tests and quick starts.

It holds a reproducible random subset of the public S-DPO LastFM prompts in their public (leaky) format plus the
full item catalogue; `load_sample` gives them leak-free candidate lists by default. `build_sample` rebuilds the
directory from the full data.
"""

from __future__ import annotations

import gzip
import os
import shutil
from functools import lru_cache
from pathlib import Path

from ._rng import SALT_SAMPLE, stream
from .candidates import NUM_CANDIDATES, leak_free_candidates
from .readers import RecExample, _open_text, read_catalogue, read_examples


SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "lastfm_sample"
SAMPLE_FILES = {"train": "train.jsonl.gz", "val": "val.jsonl.gz", "items": "items.txt"}
# Folder of a full dataset in the bundled sample's layout (train.jsonl.gz, val.jsonl.gz, items.txt).
DATA_ENV = "TRL_DYNAMICPO_DATA"
# Names of the validation file in a data folder: the sample's, and the one `trl-dynamicpo data build` writes.
VALIDATION_FILES = ("val.jsonl.gz", "valid.jsonl.gz")


def validation_file(folder: str | os.PathLike) -> Path:
    """The validation file of a data folder (`val.jsonl.gz`, or `valid.jsonl.gz` as `data build` writes it)."""
    folder = Path(folder)
    return next((folder / name for name in VALIDATION_FILES if (folder / name).exists()), folder / VALIDATION_FILES[0])


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The folder of the full data: `explicit` if given, else `$TRL_DYNAMICPO_DATA`, else None (use the sample).

    Raises `FileNotFoundError` when the folder named does not hold `train.jsonl.gz`, a validation file
    (`val.jsonl.gz` or `valid.jsonl.gz`, see `validation_file`) and `items.txt`.
    """
    value = explicit if explicit is not None else os.environ.get(DATA_ENV) or None
    if value is None:
        return None
    folder = Path(value).expanduser()
    missing = [name for name in (SAMPLE_FILES["train"], SAMPLE_FILES["items"]) if not (folder / name).exists()]
    if not validation_file(folder).exists():
        missing.append(" or ".join(VALIDATION_FILES))
    if missing:
        source = "given" if explicit is not None else f"named by ${DATA_ENV}"
        raise FileNotFoundError(f"The data folder {source}, {folder}, lacks {missing}.")
    return folder


def sample_path(name: str) -> Path:
    """Path of a bundled file: `"train.jsonl.gz"`, `"val.jsonl.gz"` or `"items.txt"` (or `"train"`, `"val"`, `"items"`)."""
    filename = SAMPLE_FILES.get(name, name)
    if filename not in SAMPLE_FILES.values():
        raise ValueError(f"unknown sample file {name!r}; choose one of {sorted(SAMPLE_FILES.values())}")
    return SAMPLE_DIR / filename


@lru_cache(maxsize=1)
def _catalogue() -> tuple[str, ...]:
    return tuple(read_catalogue(sample_path("items.txt")))


def sample_catalogue() -> list[str]:
    """The bundled LastFM catalogue (all 4,606 item names, in id order)."""
    return list(_catalogue())


def load_sample(split: str = "train", leak_free: bool = True, seed: int = 0) -> list[RecExample]:
    """Load the bundled LastFM `split` ("train" or "val").

    With `leak_free` (the default) every prompt gets a new 20-item candidate list drawn from the catalogue
    (`leak_free_candidates` with `seed`); otherwise the public lists are kept, whose negatives reveal the target
    (see `leak_check`).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    catalogue = _catalogue()
    examples = read_examples(sample_path(split), catalogue=frozenset(catalogue))
    if leak_free:
        examples = leak_free_candidates(examples, catalogue, num_candidates=NUM_CANDIDATES, seed=seed)
    return examples


def write_sample_slice(output_dir: str | os.PathLike, num_items: int, seed: int = 0) -> dict[str, str]:
    """Write the bundled sample restricted to its `num_items` most frequent items (counted over the training
    histories and targets): the prompts whose target is one of them, and a catalogue of just those items.

    Histories keep every item (names outside the slice are ordinary text). Returns the CLI's file keys
    (`train_file`, `eval_file`, `items_file`).
    """
    from collections import Counter

    from .readers import write_examples

    train, val = load_sample("train", leak_free=False), load_sample("val", leak_free=False)
    counts = Counter(name for ex in train for name in (*ex.history, ex.target))
    top = [name for name, _ in counts.most_common(num_items)]
    keep = set(top)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "train_file": write_examples([ex for ex in train if ex.target in keep], out / "train.jsonl", history_as_list=True),
        "eval_file": write_examples([ex for ex in val if ex.target in keep], out / "val.jsonl", history_as_list=True),
    }
    items = out / "items.txt"
    items.write_text("".join(f"{i}::{name}\n" for i, name in enumerate(top)), encoding="utf-8")
    return {**{k: str(v) for k, v in files.items()}, "items_file": str(items)}


def build_sample(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike = SAMPLE_DIR,
    n_train: int = 3000,
    n_val: int = 300,
    seed: int = 0,
) -> dict[str, Path]:
    """Rebuild the sample: `n_train` / `n_val` rows drawn without replacement from `src_dir`'s `train.jsonl.gz` /
    `val.jsonl.gz` (kept in file order, byte for byte), and a copy of `items.txt`.

    The rows are validated with `read_examples` against the catalogue first, so a sample never holds a bad row.
    The gzip files are written with a zero timestamp, so the same inputs give identical bytes.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    catalogue = frozenset(read_catalogue(src / "items.txt"))
    written: dict[str, Path] = {}
    for split, count, salt_index in (("train", n_train, 0), ("val", n_val, 1)):
        source = src / SAMPLE_FILES[split]
        read_examples(source, catalogue=catalogue)  # validation only
        with _open_text(source) as handle:
            lines = [line for line in handle.read().splitlines() if line.strip()]
        if count > len(lines):
            raise ValueError(f"{source}: asked for {count} rows, the file has {len(lines)}")
        picks = sorted(stream(seed, salt_index, SALT_SAMPLE).choice(len(lines), size=count, replace=False).tolist())
        target = dst / SAMPLE_FILES[split]
        with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
            handle.write("".join(lines[i] + "\n" for i in picks).encode("utf-8"))
        written[split] = target
    shutil.copyfile(src / "items.txt", dst / "items.txt")
    written["items"] = dst / "items.txt"
    return written
