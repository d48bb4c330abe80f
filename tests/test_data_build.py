"""`trl-dynamicpo data build`: LLaRA's raw files -> the recipes' S-DPO-format splits, items.txt and manifest.json.

The papers' candidate rule is checked against an independent transcription of S-DPO's `negative_sampling` (list of
eligible ids, `random.seed`, `random.sample`, `random.shuffle`), the leak-free lists against what `sft` / `train` /
`eval` redraw, every name rule against hand-written names, and the restricted unpickler against crafted malicious
pickles. With `../shared` present, LLaRA's published LastFM table is rebuilt into the 47,872 public prompts.
"""

import gzip
import hashlib
import io
import json
import logging
import os
import pickle
import random
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from trl_dynamicpo.cli.main import main
from trl_dynamicpo.recsys import (
    RawFileMismatch,
    RecDataError,
    UnsafePickleError,
    build_dataset,
    load_dataframe_pickle,
    pickle_globals,
    read_catalogue,
    read_examples,
    read_raw_catalogue,
    read_raw_table,
)
from trl_dynamicpo.recsys.download import hub_files_for
from trl_dynamicpo.recsys.raw import RawRow
from trl_dynamicpo.recsys.safe_pickle import RestrictedUnpickler


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ----------------------------------------------------------------------------------------------------------------
# Generated raw files


def write_catalogue(path: Path, names, rule="llara", start=0):
    if rule == "movielens":  # u.item: id (from 1) | title | date | ..., ISO-8859-1
        lines = [f"{i + 1}|{name}|01-Jan-1995||http://x|0|1" for i, name in enumerate(names, start)]
        path.write_bytes(("\n".join(lines) + "\n").encode("iso-8859-1"))
    else:
        path.write_text("".join(f"{i}::{name}\r\n" for i, name in enumerate(names, start)), encoding="utf-8")
    return path


def make_rows(num_items, padding, count=30, length=10, seed=0, pairs=False):
    """LLaRA-style rows: a sliding window of a user's items, padded at the end; the first rows are short."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        real = min(i % (length + 1), length)
        items = rng.sample(range(num_items), real + 1)
        seq, target = items[:real] + [padding] * (length - real), items[real]
        if pairs:
            seq = [(item, 0 if item == padding else rng.randint(1, 5)) for item in seq]
            target = (target, rng.randint(1, 5))
        rows.append({"seq": seq, "len_seq": max(real, 1), "next": target})
    return rows


def llara_frame(rows) -> pd.DataFrame:
    """A DataFrame as LLaRA's pickles hold it: object-dtype column labels (pandas 3 would make them Arrow strings)."""
    frame = pd.DataFrame(rows, columns=["seq", "len_seq", "next"])
    frame.columns = pd.Index(list(frame.columns), dtype=object)
    return frame


def write_table(path: Path, rows):
    frame = llara_frame(rows)
    if path.suffix == ".df":
        frame.to_pickle(path)  # trusted: written here
    elif path.suffix == ".csv":
        frame.assign(seq=frame.seq.map(repr), next=frame.next.map(repr)).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sdpo_reference(rows, ids, names, padding, num_candidates=20):
    """S-DPO's data code, transcribed: the prompts of rows with len_seq >= 3 and their candidate lists."""
    prompts = []
    for row in rows:
        if row["len_seq"] < 3:
            continue
        seq = [x[0] if isinstance(x, tuple) else x for x in row["seq"]]
        target = row["next"][0] if isinstance(row["next"], tuple) else row["next"]
        history = [x for x in seq if x != padding]
        canset = [i for i in ids if i not in history and i != target]
        random.seed(target)
        candidates = random.sample(canset, num_candidates - 1) + [target]
        random.seed(target)
        random.shuffle(candidates)
        prompts.append({"historyList": "::".join(names[x] for x in history),
                        "itemList": [names[x] for x in candidates], "trueSelection": names[target]})  # fmt: skip
    return prompts


def read_jsonl(path):
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


ARTISTS = [f"Artist {i}" for i in range(60)] + [":wumpscut:", "Welle:Erdball"]
LASTFM_PADDING = 4606


def build(dataset, raw, out, **kwargs):
    """`build_dataset` on generated files: they are not the published ones, so the built-in sha256 table is off."""
    kwargs = {"check_published": False, "show_progress": False, **kwargs}
    return build_dataset(dataset, raw, out, **kwargs)


@pytest.fixture()
def lastfm_raw(tmp_path):
    """LLaRA's LastFM layout with a small catalogue: id2name.txt (CRLF, as published) and three DataFrame pickles."""
    raw = tmp_path / "raw"
    raw.mkdir()
    write_catalogue(raw / "id2name.txt", ARTISTS)
    splits = {"train_data.df": 0, "Val_data.df": 1, "Test_data.df": 2}
    rows = {name: make_rows(len(ARTISTS), LASTFM_PADDING, seed=seed) for name, seed in splits.items()}
    for name, split_rows in rows.items():
        write_table(raw / name, split_rows)
    return raw, rows


# ----------------------------------------------------------------------------------------------------------------
# Name rules


def test_llara_names_lastfm_and_steam(tmp_path):
    """LLaRA: `split('::')[1].strip()`: CRLF and spaces go, a Steam name ends at ` :: `, colons inside names stay."""
    path = tmp_path / "id2name.txt"
    path.write_text("0::Half-Life 2 :: Episode One\r\n1::  Dota 2 \r\n2:::wumpscut:\r\n\r\n3::Welle:Erdball\r\n",
                    encoding="utf-8")  # fmt: skip
    catalogue = read_raw_catalogue(path, "llara")
    assert catalogue.ids == [0, 1, 2, 3]
    assert [catalogue.names[i] for i in catalogue.ids] == ["Half-Life 2", "Dota 2", ":wumpscut:", "Welle:Erdball"]


def test_goodreads_names_cut_at_parenthesis(tmp_path):
    path = tmp_path / "id2name.txt"
    path.write_text("0::Dune (Dune, #1)\n1::The Hobbit\n2::Emma(Penguin Classics)\n3::(Untitled)\n", encoding="utf-8")
    catalogue = read_raw_catalogue(path, "goodreads")
    # The rule would leave nothing of '(Untitled)': the whole name is kept and reported.
    assert [catalogue.names[i] for i in catalogue.ids] == ["Dune", "The Hobbit", "Emma", "(Untitled)"]
    assert catalogue.kept_whole == [3]


def test_movielens_titles(tmp_path):
    """u.item: ids from 1 (LLaRA's from 0), ISO-8859-1, the year cut, `, The` / `, A` / `, An` moved to the front."""
    titles = [
        "Toy Story (1995)",
        "Usual Suspects, The (1995)",
        "Clockwork Orange, A (1971)",
        "Affair to Remember, An (1957)",  # LLaRA tests ', A' first: 'A Affair to Remembern', the papers' name
        "Cité des enfants perdus, La (1995)",
        "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
        "unknown",
    ]
    catalogue = read_raw_catalogue(write_catalogue(tmp_path / "u.item", titles, "movielens"), "movielens")
    assert catalogue.ids == list(range(7))
    assert [catalogue.names[i] for i in catalogue.ids] == [
        "Toy Story",
        "The Usual Suspects",
        "A Clockwork Orange",
        "A Affair to Remembern",
        "Cité des enfants perdus, La",
        "The City of Lost Children (Cité des enfants perdus, La)",
        "unknown",  # no year to cut: kept whole
    ]
    assert catalogue.kept_whole == [6]


def test_catalogue_errors_name_file_and_line(tmp_path):
    path = tmp_path / "id2name.txt"
    path.write_text("0::A\nB\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"id2name.txt: line 2: expected 'id::name'"):
        read_raw_catalogue(path)
    path.write_text("0::A\n1::B\n0::C\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3: id '0' already given on line 1"):
        read_raw_catalogue(path)
    path.write_text("x::A\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 1: the id 'x' is not an integer"):
        read_raw_catalogue(path)


# ----------------------------------------------------------------------------------------------------------------
# Raw tables and the restricted unpickler


@pytest.mark.parametrize("suffix", [".df", ".csv", ".parquet", ".jsonl"])
@pytest.mark.parametrize("pairs", [False, True], ids=["ids", "movielens-pairs"])
def test_table_formats_read_the_same_rows(tmp_path, suffix, pairs):
    rows = make_rows(40, 40, count=12, pairs=pairs)
    table = read_raw_table(write_table(tmp_path / f"train_data{suffix}", rows))
    first = lambda x: x[0] if isinstance(x, tuple) else x  # noqa: E731
    expected = [RawRow([first(x) for x in r["seq"]], r["len_seq"], first(r["next"])) for r in rows]
    assert table.rows == expected
    assert table.format == {".df": "pickle", ".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}[suffix]


def test_bad_table_values_name_file_row_line_and_field(tmp_path):
    rows = make_rows(40, 40, count=3)
    rows[1]["seq"] = [1, "Muse", 3]
    with pytest.raises(RecDataError, match=r"train_data.csv: row 1 \(line 3\), field 'seq': expected an item id"):
        read_raw_table(write_table(tmp_path / "train_data.csv", rows))
    with pytest.raises(RecDataError, match=r"train_data.df: row 1, field 'seq'"):
        read_raw_table(write_table(tmp_path / "train_data.df", rows))
    frame = llara_frame([{"seq": [1], "len_seq": 1, "next": 2}]).drop(columns="len_seq")
    frame.to_pickle(tmp_path / "cols.df")
    with pytest.raises(ValueError, match=r"cols.df: no column 'len_seq'"):
        read_raw_table(tmp_path / "cols.df")


def test_safe_pickle_reads_a_pandas_dataframe(tmp_path):
    frame = llara_frame(make_rows(40, 40, count=20))
    frame.to_pickle(tmp_path / "t.df")
    pd.testing.assert_frame_equal(load_dataframe_pickle(tmp_path / "t.df"), frame)
    # pandas 3's default string labels are Arrow arrays, rebuilt from raw buffers by pyarrow: not admitted.
    pd.DataFrame(make_rows(40, 40, count=2)).to_pickle(tmp_path / "arrow.df")
    if pd.DataFrame(columns=["a"]).columns.dtype != object:
        with pytest.raises(UnsafePickleError, match=r"pyarrow\.lib\._restore_array|StringArray"):
            load_dataframe_pickle(tmp_path / "arrow.df")


class _Marker:
    """Pickles as a call of `func(*args)`: what a malicious file does on load."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious(marker: Path) -> dict:
    return {
        f"{os.system.__module__}.system": _Marker(os.system, f"touch {marker}"),
        "builtins.eval": _Marker(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.check_call": _Marker(subprocess.check_call, ["touch", str(marker)]),
        "builtins.exec": _Marker(exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("refused", ["system", "builtins.eval", "subprocess.check_call", "builtins.exec"])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, refused, protocol):
    marker = tmp_path / "pwned"
    payloads = _malicious(marker)
    name = next(key for key in payloads if key.endswith(refused))
    path = tmp_path / "train_data.df"
    # fix_imports=False: protocols 0-2 would otherwise write Python 2 names (__builtin__.eval, commands.check_call).
    path.write_bytes(pickle.dumps(payloads[name], protocol=protocol, fix_imports=False))
    assert name in pickle_globals(path.read_bytes())
    with pytest.raises(UnsafePickleError) as err:
        read_raw_table(path)
    assert name in str(err.value) and err.value.refused == [name] and "nothing was executed" in str(err.value)
    assert not marker.exists()
    # The restricted Unpickler alone (without the opcode scan) refuses the global when it is looked up.
    with pytest.raises(UnsafePickleError, match=name.replace(".", r"\.")):
        RestrictedUnpickler(io.BytesIO(path.read_bytes()), path).load()
    assert not marker.exists()


def test_malicious_object_inside_a_dataframe_is_refused(tmp_path):
    """A real DataFrame pickle (allowed globals) carrying one payload in its `seq` column."""
    marker = tmp_path / "pwned"
    rows = make_rows(40, 40, count=5)
    rows[3]["seq"] = [1, _Marker(os.system, f"touch {marker}"), 3]
    llara_frame(rows).to_pickle(tmp_path / "train_data.df")
    with pytest.raises(UnsafePickleError, match=r"it names posix\.system|it names nt\.system") as err:
        build_dataset("llara", tmp_path, tmp_path / "out", padding_id=40, catalogue=write_catalogue(
            tmp_path / "id2name.txt", ARTISTS[:41]))  # fmt: skip
    assert err.value.refused == [f"{os.system.__module__}.system"]
    assert not marker.exists() and not (tmp_path / "out").exists()  # nothing written either


def test_unresolvable_or_foreign_globals_are_refused(tmp_path):
    # STACK_GLOBAL on two ints (no string to resolve), an extension-registry code, a persistent id.
    crafted = {
        "unresolved STACK_GLOBAL": b"\x80\x04K\x01K\x02\x93.",
        "extension code 7": b"\x80\x02\x82\x07.",
        "persistent id": b"\x80\x02K\x01Q.",
    }
    for what, data in crafted.items():
        path = tmp_path / "x.df"
        path.write_bytes(data)
        with pytest.raises(UnsafePickleError, match=what):
            load_dataframe_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable pickle"):
        load_dataframe_pickle(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="holds a list, not a pandas DataFrame"):
        load_dataframe_pickle(path)


# ----------------------------------------------------------------------------------------------------------------
# Building


def test_papers_rule_matches_sdpo_code(lastfm_raw, tmp_path):
    raw, rows = lastfm_raw
    manifest = build("lastfm", raw, tmp_path / "out", candidates="papers")
    names = dict(enumerate(ARTISTS))
    for split, source in (("train", "train_data.df"), ("valid", "Val_data.df"), ("test", "Test_data.df")):
        expected = sdpo_reference(rows[source], list(names), names, LASTFM_PADDING)
        assert read_jsonl(tmp_path / "out" / f"{split}.jsonl.gz") == expected, split
        entry = manifest["splits"][split]
        short = sum(r["len_seq"] < 3 for r in rows[source])
        assert entry["rows_read"] == 30 and entry["rows_written"] == 30 - short == len(expected)
        assert entry["dropped"] == {"len_seq < 3": short}
        assert entry["sha256"] == hashlib.sha256((tmp_path / "out" / f"{split}.jsonl.gz").read_bytes()).hexdigest()
    # The splits share one catalogue, which the recipes' reader takes; histories with ':wumpscut:' parse back.
    items = read_catalogue(tmp_path / "out" / "items.txt")
    assert items == ARTISTS
    for split in ("train", "valid", "test"):
        for ex in read_examples(tmp_path / "out" / f"{split}.jsonl.gz", catalogue=items, unknown_items="error"):
            assert set(ex.history) <= set(items) and len(ex.candidates) == 20


def test_manifest_records_sources_rule_seed_and_version(lastfm_raw, tmp_path):
    from trl_dynamicpo import __version__

    raw, rows = lastfm_raw
    manifest = build("lastfm", raw, tmp_path / "out", candidate_seed=3)
    assert manifest == json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["package_version"] == __version__ and manifest["dataset"] == "lastfm"
    assert manifest["candidates"]["rule"] == "leak_free" and manifest["candidates"]["seed"] == 3
    assert manifest["padding_id"] == LASTFM_PADDING and manifest["min_history"] == 3
    by_file = {source["file"]: source for source in manifest["sources"]}
    assert set(by_file) == {"id2name.txt", "train_data.df", "Val_data.df", "Test_data.df"}
    for name, source in by_file.items():
        assert source["sha256"] == hashlib.sha256((raw / name).read_bytes()).hexdigest()
        assert source["rows"] == (len(ARTISTS) if name == "id2name.txt" else len(rows[name]))
    assert manifest["missing_splits"] == {}
    assert manifest["items"]["items"] == len(ARTISTS)


def test_leak_free_lists_are_the_ones_the_commands_redraw(lastfm_raw, tmp_path):
    """`candidates: leak_free` in a recipe redraws the lists from the file: with the same seed, the same lists."""
    from trl_dynamicpo.pipeline import RecDataArguments, load_rec_data

    raw, _ = lastfm_raw
    out = tmp_path / "out"
    build("lastfm", raw, out, candidate_seed=0)
    args = RecDataArguments(train_file=str(out / "train.jsonl.gz"), eval_file=str(out / "valid.jsonl.gz"),
                            test_file=str(out / "test.jsonl.gz"), items_file=str(out / "items.txt"))  # fmt: skip
    redrawn = load_rec_data(args)
    as_written = RecDataArguments(**{**vars(args), "candidates": "file"})
    kept = load_rec_data(as_written)
    for split in ("train", "eval", "test"):
        assert [ex.candidates for ex in getattr(redrawn, split)] == [ex.candidates for ex in getattr(kept, split)]
    # Leak-free negatives avoid the history and the target.
    for ex in kept.train:
        assert len(set(ex.candidates)) == 20 and not set(ex.candidates) & set(ex.history)


def test_missing_splits_and_split_selection(lastfm_raw, tmp_path, caplog):
    raw, _ = lastfm_raw
    (raw / "Test_data.df").unlink()
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.build"):
        manifest = build("lastfm", raw, tmp_path / "out")
    assert set(manifest["splits"]) == {"train", "valid"} and set(manifest["missing_splits"]) == {"test"}
    assert "split 'test' is missing" in caplog.text
    assert not (tmp_path / "out" / "test.jsonl.gz").exists()
    only = build("lastfm", raw, tmp_path / "only", splits=["valid"])
    assert set(only["splits"]) == {"valid"} and only["missing_splits"] == {}
    assert sorted(p.name for p in (tmp_path / "only").iterdir()) == ["items.txt", "manifest.json", "valid.jsonl.gz"]
    for name in ("train_data.df", "Val_data.df"):
        (raw / name).unlink()
    with pytest.raises(FileNotFoundError, match="no raw file for any of the splits"):
        build("lastfm", raw, tmp_path / "none")


def test_steam_and_movielens_splits(tmp_path):
    steam = tmp_path / "steam"
    steam.mkdir()
    games = [f"Game {i}" for i in range(40)]
    write_catalogue(steam / "id2name.txt", [f"{g} :: Deluxe Edition" if i % 3 == 0 else g for i, g in enumerate(games)])
    rows = {"train_data.df": make_rows(40, 3581, seed=4), "Val_data.csv": make_rows(40, 3581, seed=5)}
    for name, split_rows in rows.items():
        write_table(steam / name, split_rows)
    manifest = build("steam", steam, tmp_path / "steam-out", candidates="papers")
    names = dict(enumerate(games))
    assert read_jsonl(tmp_path / "steam-out" / "train.jsonl.gz") == sdpo_reference(rows["train_data.df"], list(names), names, 3581)
    assert read_jsonl(tmp_path / "steam-out" / "valid.jsonl.gz") == sdpo_reference(rows["Val_data.csv"], list(names), names, 3581)
    assert read_catalogue(tmp_path / "steam-out" / "items.txt") == games
    assert manifest["missing_splits"].keys() == {"test"}

    movies = tmp_path / "ml"
    movies.mkdir()
    titles = [f"Film {i}, The ({1950 + i})" for i in range(40)]
    write_catalogue(movies / "u.item", titles, "movielens")
    rows = make_rows(40, 1682, seed=6, pairs=True)
    write_table(movies / "movielens_Test_data.df", rows)  # S-DPO's copies carry the dataset as a prefix
    build("movielens", movies, tmp_path / "ml-out", candidates="papers")
    names = {i: f"The Film {i}" for i in range(40)}
    assert read_jsonl(tmp_path / "ml-out" / "test.jsonl.gz") == sdpo_reference(rows, list(names), names, 1682)


def test_names_shared_by_two_ids(tmp_path):
    """MovieLens lists some films twice: one item in items.txt, and a papers list naming both ids is dropped."""
    raw = tmp_path / "ml"
    raw.mkdir()
    titles = [f"Film {i} (1990)" for i in range(22)] + ["Film 0 (1990)"]  # id 22 is id 0 again
    write_catalogue(raw / "u.item", titles, "movielens")
    # 23 ids, a 3-item history: the 19 other ids are all drawn, so both copies of 'Film 0' are in the list.
    row = {"seq": [(5, 3), (6, 4), (7, 5)] + [(1682, 0)] * 7, "len_seq": 3, "next": (8, 4)}
    write_table(raw / "train_data.df", [row, {**row, "seq": [(0, 3), (6, 4), (7, 5)] + [(1682, 0)] * 7}])
    manifest = build("movielens", raw, tmp_path / "out", candidates="papers")
    assert manifest["splits"]["train"]["dropped"] == {"candidate list names one item twice (ids that share a name)": 1}
    assert manifest["items"]["names_shared_by_several_ids"] == {"Film 0": [0, 22]}
    assert read_catalogue(tmp_path / "out" / "items.txt") == [f"Film {i}" for i in range(22)]
    (kept,) = read_examples(tmp_path / "out" / "train.jsonl.gz")
    assert kept.history == ["Film 0", "Film 6", "Film 7"]  # id 0 in the history: its twin may be a negative
    leak_free = build("movielens", raw, tmp_path / "lf", num_candidates=10)  # 22 distinct names
    assert leak_free["splits"]["train"]["rows_written"] == 2


def test_sha256_mismatch_is_refused_before_reading(lastfm_raw, tmp_path):
    raw, _ = lastfm_raw
    # The built-in table holds LLaRA's published LastFM files, which these generated files are not.
    with pytest.raises(RawFileMismatch, match=r"id2name.txt: sha256 [0-9a-f]{64} differs from the published file's b2fb5e6e"):
        build_dataset("lastfm", raw, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    digest = hashlib.sha256((raw / "train_data.df").read_bytes()).hexdigest()
    manifest = build("lastfm", raw, tmp_path / "ok", expect_sha256={"train_data.df": digest})
    assert [s["verified"] for s in manifest["sources"]] == [False, True, False, False]
    with pytest.raises(RawFileMismatch, match=r"train_data.df: .* differs from the expected \(expect_sha256\) 0{64}"):
        build("lastfm", raw, tmp_path / "bad", expect_sha256={"train_data.df": "0" * 64})
    with pytest.raises(ValueError, match="expect_sha256 names train.df, which this build does not read"):
        build("lastfm", raw, tmp_path / "bad", expect_sha256={"train.df": "0" * 64})


def test_unknown_item_ids_name_file_row_and_field(tmp_path):
    write_catalogue(tmp_path / "id2name.txt", ARTISTS[:41])
    rows = make_rows(41, 41, count=6)
    rows[4]["seq"][0] = 99
    write_table(tmp_path / "train_data.jsonl", rows)
    with pytest.raises(RecDataError, match=r"train_data.jsonl: row 4 \(line 5\), field 'seq': the history holds 99, an id id2name.txt lacks"):
        build("llara", tmp_path, tmp_path / "out", padding_id=41, catalogue="id2name.txt")
    assert not (tmp_path / "out").exists()  # the splits are built in memory first: no partial output
    rows[4]["seq"][0], rows[5]["next"] = 1, 41
    write_table(tmp_path / "train_data.jsonl", rows)
    with pytest.raises(RecDataError, match=r"row 5 \(line 6\), field 'next': the target is the padding id"):
        build("llara", tmp_path, tmp_path / "out", padding_id=41, catalogue="id2name.txt")
    with pytest.raises(ValueError, match="needs the padding id"):
        build_dataset("llara", tmp_path, tmp_path / "out", catalogue="id2name.txt")
    with pytest.raises(ValueError, match="needs the catalogue file"):
        build_dataset("llara", tmp_path, tmp_path / "out", padding_id=41)


def test_sdpo_prompt_files_as_source_and_reference(lastfm_raw, tmp_path):
    """S-DPO publishes LastFM's validation and test prompts: a split's source when no table is there, else the
    reference the built split is compared with."""
    raw, rows = lastfm_raw
    names = dict(enumerate(ARTISTS))
    (raw / "Val_data.df").unlink()
    published_val = sdpo_reference(rows["Val_data.df"], list(names), names, LASTFM_PADDING)
    (raw / "lastfm-val.json").write_text(json.dumps(published_val, indent=4), encoding="utf-8")
    published_test = sdpo_reference(rows["Test_data.df"], list(names), names, LASTFM_PADDING)
    published_test[2]["itemList"].reverse()
    (raw / "lastfm-test.json").write_text(json.dumps(published_test), encoding="utf-8")
    manifest = build("lastfm", raw, tmp_path / "out", candidates="papers")
    assert read_jsonl(tmp_path / "out" / "valid.jsonl.gz") == published_val
    assert manifest["splits"]["valid"]["source"] == "lastfm-val.json"
    reference = manifest["splits"]["test"]["reference"]
    assert manifest["splits"]["test"]["source"] == "Test_data.df" and reference["file"] == "lastfm-test.json"
    assert reference["identical"] is False and reference["differing_rows"] == 1 and reference["first_differing_row"] == 2
    leak_free = build("lastfm", raw, tmp_path / "lf")
    assert leak_free["splits"]["test"]["reference"]["identical"] is True  # histories and targets
    assert [r["itemList"] for r in read_jsonl(tmp_path / "lf" / "valid.jsonl.gz")] != [r["itemList"] for r in published_val]


# ----------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_help_and_build(lastfm_raw, tmp_path, capsys):
    assert main(["data", "--help"]) == 0
    assert "build" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "build", "--help"])
    assert exit_info.value.code == 0 and "--raw" in capsys.readouterr().out
    assert main(["data", "nope"]) == 2
    raw, rows = lastfm_raw
    digest = hashlib.sha256((raw / "id2name.txt").read_bytes()).hexdigest()
    code = main(["data", "build", "lastfm", "--raw", str(raw), "--out", str(tmp_path / "out"), "--candidates",
                 "papers", "--splits", "train", "test", "--no_check_published", "--expect-sha256",
                 f"id2name.txt={digest}"])  # fmt: skip
    assert code == 0
    short = sum(r["len_seq"] < 3 for r in rows["train_data.df"])
    printed = capsys.readouterr().out
    assert f"train: {30 - short} prompts from train_data.df (dropped: {short} len_seq < 3) -> train.jsonl.gz" in printed
    names = dict(enumerate(ARTISTS))
    expected = sdpo_reference(rows["Test_data.df"], list(names), names, LASTFM_PADDING)
    assert read_jsonl(tmp_path / "out" / "test.jsonl.gz") == expected
    assert not (tmp_path / "out" / "valid.jsonl.gz").exists()
    with pytest.raises(ValueError, match="FILE=SHA256"):
        main(["data", "build", "lastfm", "--raw", str(raw), "--out", str(tmp_path), "--expect_sha256", "abc"])


def test_download_takes_the_dataset_folder_tables_and_catalogue():
    """The Hub listing -> the files `build_dataset` reads (the download itself needs network)."""
    listing = ["README.md", "lastfm/train_data.df", "lastfm/Val_data.df", "lastfm/Test_data.df", "lastfm/id2name.txt",
               "lastfm/lastfm.pt", "movielens/u.item", "movielens/train_data.df", "steam/id2name.txt",
               "steam/nested/train_data.df"]  # fmt: skip
    assert hub_files_for("lastfm", listing) == ["lastfm/Test_data.df", "lastfm/Val_data.df", "lastfm/id2name.txt",
                                                "lastfm/train_data.df"]  # fmt: skip
    assert hub_files_for("movielens", listing) == ["movielens/train_data.df", "movielens/u.item"]
    assert hub_files_for("steam", listing) == ["steam/id2name.txt"]


# ----------------------------------------------------------------------------------------------------------------
# LLaRA's published LastFM files


@pytest.fixture(scope="module")
def published_lastfm():
    raw, public = SHARED / "llara_lastfm", SHARED / "lastfm"
    missing = [str(p) for p in (raw / "train_data.df", raw / "id2name.txt", public / "train.jsonl.gz",
                                public / "items.txt") if not p.is_file()]  # fmt: skip
    if missing:
        pytest.skip(f"LLaRA's raw LastFM files and the public split are not in ../shared/data: {', '.join(missing)}")
    return raw, public


def test_real_pickle_names_only_dataframe_globals(published_lastfm):
    raw, _ = published_lastfm
    assert set(pickle_globals((raw / "train_data.df").read_bytes())) == {
        "pandas.core.frame.DataFrame", "pandas.core.internals.managers.BlockManager",
        "pandas._libs.internals._unpickle_block", "pandas.core.indexes.base._new_Index",
        "pandas.core.indexes.base.Index", "pandas.core.indexes.range.RangeIndex", "numpy.ndarray", "numpy.dtype",
        "numpy.core.multiarray._reconstruct", "numpy.core.numeric._frombuffer", "builtins.slice",
    }  # fmt: skip


@pytest.mark.slow
def test_lastfm_training_split_reproduces_exactly(published_lastfm, tmp_path):
    """LLaRA's train_data.df with S-DPO's rule gives the 47,872 public prompts, row for row."""
    raw, public = published_lastfm
    manifest = build_dataset("lastfm", raw, tmp_path, candidates="papers", splits=["train"], show_progress=False)
    built, published = read_jsonl(tmp_path / "train.jsonl.gz"), read_jsonl(public / "train.jsonl.gz")
    differing = [i for i, (a, b) in enumerate(zip(built, published)) if a != b]
    entry = manifest["splits"]["train"]
    print(f"\nLastFM train: {entry['rows_read']} rows read, {entry['dropped']} dropped, {len(built)} prompts built, "
          f"{len(published)} published, {len(differing)} differing; items.txt identical: "
          f"{(tmp_path / 'items.txt').read_bytes() == (public / 'items.txt').read_bytes()}")  # fmt: skip
    assert len(built) == len(published) == 47_872 and not differing
    assert entry["dropped"] == {"len_seq < 3": 2928} and entry["rows_read"] == 50_800
    assert (tmp_path / "items.txt").read_bytes() == (public / "items.txt").read_bytes()
    assert all(source["verified"] for source in manifest["sources"])  # both files match the published sha256
