import gzip
import json
import logging

import pytest

from trl_dynamicpo.recsys import RecDataError, RecExample, read_catalogue, read_examples, split_history, write_examples


CATALOGUE = ["Muse", ":wumpscut:", "And One", "Welle:Erdball", "[:SITD:]", "Portishead", "Air", "Moby", "Björk"]


def row(history="Muse::Air", candidates=("Moby", "Björk", "Portishead"), target="Björk"):
    return {"historyList": history, "itemList": list(candidates), "trueSelection": target}


def write_rows(path, rows, *, jsonl=True, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows) if jsonl else json.dumps(rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def catalogue_file(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("".join(f"{i}::{name}\n" for i, name in enumerate(CATALOGUE)), encoding="utf-8")
    return path


@pytest.mark.parametrize("jsonl", [True, False])
@pytest.mark.parametrize("gz", [True, False])
def test_read_formats(tmp_path, jsonl, gz):
    # gzip is detected from the content, so a misleading suffix still works.
    path = write_rows(tmp_path / "data.txt", [row(), row(history=["Air", "Moby"], target="Moby")], jsonl=jsonl, gz=gz)
    examples = read_examples(path)
    assert examples == [
        RecExample(["Muse", "Air"], ["Moby", "Björk", "Portishead"], "Björk"),
        RecExample(["Air", "Moby"], ["Moby", "Björk", "Portishead"], "Moby"),
    ]
    assert examples[0].target_index == 1


def test_colon_names_against_catalogue(tmp_path, catalogue_file):
    rows = [
        row(history=":wumpscut:::And One::Welle:Erdball::[:SITD:]"),
        row(history="Muse:::wumpscut:"),
        row(history="Air:::wumpscut:::Moby"),
    ]
    path = write_rows(tmp_path / "d.jsonl", rows)
    with_catalogue = read_examples(path, catalogue=catalogue_file)
    assert [ex.history for ex in with_catalogue] == [
        [":wumpscut:", "And One", "Welle:Erdball", "[:SITD:]"],
        ["Muse", ":wumpscut:"],
        ["Air", ":wumpscut:", "Moby"],
    ]
    # A list of names works as a catalogue too.
    assert read_examples(path, catalogue=CATALOGUE) == with_catalogue
    # Without a catalogue (and with the name not among the row's candidates) it falls back to the plain split.
    assert read_examples(path)[0].history == [":wumpscut", ":And One", "Welle:Erdball", "[:SITD:]"]


def test_colon_names_from_row_candidates_without_catalogue(tmp_path):
    path = write_rows(
        tmp_path / "d.jsonl",
        [row(history=":wumpscut:::Air", candidates=(":wumpscut:", "Moby"), target="Moby")],
    )
    assert read_examples(path)[0].history == [":wumpscut:", "Air"]


def test_split_history_unknown_names_are_not_merged():
    assert split_history("Florence and the Machine::Plus 44", set(CATALOGUE)) == [
        "Florence and the Machine",
        "Plus 44",
    ]
    assert split_history("a:::wumpscut:::b", {":wumpscut:"}) == ["a", ":wumpscut:", "b"]
    assert split_history("Muse::Air") == ["Muse", "Air"]


def test_public_lastfm_rows_parse_against_catalogue():
    from trl_dynamicpo.recsys import sample_catalogue, sample_path

    names = set(sample_catalogue())
    examples = read_examples(sample_path("train"), catalogue=names)
    assert len(examples) == 3000
    # Every history name of the training sample is a catalogue name once parsed against it.
    assert all(name in names for ex in examples for name in ex.history)
    assert all(len(ex.candidates) == 20 and ex.target in ex.candidates for ex in examples)


BAD_ROWS = [
    ({"itemList": ["Moby"], "trueSelection": "Moby"}, "historyList", "missing field"),
    ({"historyList": "Muse", "trueSelection": "Moby"}, "itemList", "missing field"),
    ({"historyList": "Muse", "itemList": ["Moby"]}, "trueSelection", "missing field"),
    (row(target="Slayer"), "trueSelection", "target 'Slayer' is not among the 3 candidates"),
    (row(candidates=("Moby", "Björk", "Moby")), "itemList", "duplicate candidate 'Moby'"),
    (row(history=""), "historyList", "empty history"),
    (row(history=[]), "historyList", "empty history"),
    # wrong types
    (["Muse", "Air"], "(row)", "expected a JSON object, got list"),
    ({**row(), "itemList": "Moby::Björk"}, "itemList", 'expected a list of item names, got string "Moby::Björk"'),
    (row(candidates=("Moby", 3)), "itemList", 'expected a list of item names, got list ["Moby", 3]'),
    ({**row(), "trueSelection": 1}, "trueSelection", "expected a non-empty item name, got number 1"),
    (row(history=7), "historyList", "expected a '::'-joined string or a list of item names, got number 7"),
    (row(history=["Muse", None]), "historyList", 'empty or non-string item name in list ["Muse", null]'),
]


@pytest.mark.parametrize("bad, field, fragment", BAD_ROWS)
def test_bad_rows_name_file_row_line_and_field(tmp_path, bad, field, fragment):
    # A blank line before the bad row: it is no record (the row number is the record index), but it is a line.
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (row(), row())) + "\n" + json.dumps(bad) + "\n"
                    + json.dumps(row()) + "\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(ValueError) as info:
        read_examples(path)
    assert str(info.value) == f"{path}: row 2 (line 4), field '{field}': {fragment}"
    assert isinstance(info.value, RecDataError)
    assert (info.value.row, info.value.line, info.value.field) == (2, 4, field)
    # Skipped and counted instead: the other rows are kept.
    assert len(read_examples(path, drop_invalid_rows=True)) == 3


def test_bad_row_in_json_list_is_numbered_by_element(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[\n" + json.dumps(row()) + ",\n  " + json.dumps(row(target="Nope")) + "\n]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.json: row 1 \(line 3\), field 'trueSelection'"):
        read_examples(path)
    # The public S-DPO files are one-line JSON lists: every element is on line 1.
    path = write_rows(tmp_path / "one_line.json", [row(), row(), row(candidates=("Air", "Air"))], jsonl=False)
    with pytest.raises(ValueError, match=r"row 2 \(line 1\), field 'itemList': duplicate candidate 'Air'"):
        read_examples(path)


def test_json_list_that_does_not_parse(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[\n" + json.dumps(row()) + ",\n" + json.dumps(row())[:-5] + "\n]", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken.json: invalid JSON list at row 1 \(line 3, column \d+\)"):
        read_examples(path, drop_invalid_rows=True)  # a list cannot be resynchronised: the file fails
    path.write_text(json.dumps([row()]) + " x", encoding="utf-8")
    with pytest.raises(ValueError, match="Extra data"):
        read_examples(path)
    assert read_examples(write_rows(tmp_path / "empty.json", [], jsonl=False)) == []


def test_invalid_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 1 \(line 2\), field '\(json\)': invalid JSON"):
        read_examples(path)


def test_drop_invalid_rows_logs_count(tmp_path, caplog):
    rows = [row(), row(target="Nope"), row(history=""), row(candidates=("Moby", "Moby", "Björk")), row()]
    path = write_rows(tmp_path / "mixed.jsonl.gz", rows, gz=True)
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        examples = read_examples(path, drop_invalid_rows=True)
    assert len(examples) == 2
    assert f"{path}: skipped 3 bad row(s) of 5 (trueSelection: 1, historyList: 1, itemList: 1); first: {path}: row 1 " \
           "(line 2), field 'trueSelection'" in caplog.text  # fmt: skip


def test_unknown_items_are_counted_and_reported(tmp_path, catalogue_file, caplog):
    rows = [row(), row(history="Muse::Plus 44"), row(history="Plus 44::Air", candidates=("Moby", "Slayer"), target="Moby"),
            row(), row(candidates=("Moby", "Björk", "Plus 44"), target="Plus 44")]  # fmt: skip
    path = write_rows(tmp_path / "val.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        examples = read_examples(path, catalogue=catalogue_file)
    assert len(examples) == 5  # kept, and the names kept as they are
    assert examples[1].history == ["Muse", "Plus 44"] and examples[4].target == "Plus 44"
    assert (
        f"{path}: 3 of 5 row(s) name 2 item(s) that are not in the catalogue (rows kept as they are): "
        "'Plus 44' in 3 row(s), first row 1 (line 2), field 'historyList'; "
        "'Slayer' in 1 row(s), first row 2 (line 3), field 'itemList'"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        read_examples(path)  # without a catalogue nothing is unknown
    assert "not in the catalogue" not in caplog.text
    with pytest.raises(RecDataError, match=r"row 1 \(line 2\), field 'historyList': item 'Plus 44' is not in the catalogue"):
        read_examples(path, catalogue=catalogue_file, unknown_items="error")
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        kept = read_examples(path, catalogue=catalogue_file, unknown_items="error", drop_invalid_rows=True)
    assert len(kept) == 2 and "skipped 3 bad row(s) of 5 (historyList: 2, itemList: 1)" in caplog.text
    with pytest.raises(ValueError, match="unknown_items must be 'warn' or 'error'"):
        read_examples(path, unknown_items="skip")


def test_public_val_file_quirk_loads_with_a_warning(caplog):
    """The bundled validation sample names "Plus 44" (the catalogue and the training file: "+44"): it loads, and
    the unknown names are counted."""
    from trl_dynamicpo.recsys import sample_catalogue, sample_path

    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        examples = read_examples(sample_path("val"), catalogue=sample_catalogue())
    assert len(examples) == 300
    assert "row(s) name 2 item(s) that are not in the catalogue" in caplog.text and "'Plus 44' in" in caplog.text
    assert "+44" in sample_catalogue() and "Plus 44" not in sample_catalogue()


def test_full_lastfm_split_loads_and_counts_the_val_quirk(full_lastfm, caplog):
    """The full public split: every training name is in the catalogue; the validation file's "Plus 44" (16 rows;
    "+44" in the catalogue and the training file) is kept and counted, not silently accepted."""
    items = read_catalogue(full_lastfm / "items.txt")
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        train = read_examples(full_lastfm / "train.jsonl.gz", catalogue=items)
    assert len(train) == 47872 and "not in the catalogue" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        val = read_examples(full_lastfm / "val.jsonl.gz", catalogue=items)
    assert len(val) == 2767
    assert "'Plus 44' in 16 row(s)" in caplog.text and "+44" in items
    assert sum("Plus 44" in (*ex.history, *ex.candidates) for ex in val) == 16


def test_byte_order_mark(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row()) + "\n").encode())
    assert len(read_examples(path)) == 1


def test_write_round_trip(tmp_path, catalogue_file):
    examples = [
        RecExample([":wumpscut:", "Muse"], ["Moby", "Air"], "Air"),
        RecExample(["Björk"], ["Moby", "Welle:Erdball"], "Welle:Erdball"),
    ]
    for name in ("out.jsonl", "out.jsonl.gz"):
        path = write_examples(examples, tmp_path / name)
        assert read_examples(path, catalogue=catalogue_file) == examples
    with gzip.open(tmp_path / "out.jsonl.gz", "rt", encoding="utf-8") as handle:
        raw = handle.readline()
    assert json.loads(raw)["historyList"] == ":wumpscut:::Muse"
    # Identical bytes on rewrite (no timestamp in the gzip header).
    first = (tmp_path / "out.jsonl.gz").read_bytes()
    write_examples(examples, tmp_path / "out.jsonl.gz")
    assert (tmp_path / "out.jsonl.gz").read_bytes() == first


def test_read_catalogue(catalogue_file, tmp_path):
    assert read_catalogue(catalogue_file) == CATALOGUE
    bad = tmp_path / "bad.txt"
    bad.write_text("0::Muse\n1 Air\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_catalogue(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("0::Muse\n1::Muse\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2.*already given on line 1"):
        read_catalogue(dup)
