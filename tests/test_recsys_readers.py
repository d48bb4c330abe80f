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


@pytest.mark.parametrize(
    "bad, field, fragment",
    [
        ({"itemList": ["Moby"], "trueSelection": "Moby"}, "historyList", "missing field"),
        ({"historyList": "Muse", "trueSelection": "Moby"}, "itemList", "missing field"),
        ({"historyList": "Muse", "itemList": ["Moby"]}, "trueSelection", "missing field"),
        (row(target="Slayer"), "trueSelection", "not among"),
        (row(candidates=("Moby", "Björk", "Moby")), "itemList", "duplicate candidate 'Moby'"),
        (row(history=""), "historyList", "empty history"),
        (row(history=[]), "historyList", "empty history"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, bad, field, fragment):
    path = write_rows(tmp_path / "bad.jsonl", [row(), row(), bad, row()])
    with pytest.raises(ValueError) as info:
        read_examples(path)
    message = str(info.value)
    assert str(path) in message and "row 3" in message and f"'{field}'" in message and fragment in message
    assert isinstance(info.value, RecDataError)
    assert (info.value.row, info.value.field) == (3, field)


def test_bad_row_in_json_list_is_numbered_by_element(tmp_path):
    path = write_rows(tmp_path / "bad.json", [row(), row(target="Nope")], jsonl=False)
    with pytest.raises(ValueError, match=r"row 2, field 'trueSelection'"):
        read_examples(path)


def test_invalid_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"row 2, field '\(json\)'"):
        read_examples(path)


def test_skip_bad_rows_logs_count(tmp_path, caplog):
    rows = [row(), row(target="Nope"), row(history=""), row(candidates=("Moby", "Moby", "Björk")), row()]
    path = write_rows(tmp_path / "mixed.jsonl.gz", rows, gz=True)
    with caplog.at_level(logging.WARNING, logger="trl_dynamicpo.recsys.readers"):
        examples = read_examples(path, skip_bad_rows=True)
    assert len(examples) == 2
    assert "skipped 3 bad row(s)" in caplog.text


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
