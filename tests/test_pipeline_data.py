"""`candidates`: 'leak_free' redraws every list, 'file' keeps the files' lists as they are; the old name 'public' is
refused with what to write instead."""

import pytest

from trl_dynamicpo.pipeline import RecDataArguments, load_rec_data, resolve_recipe
from trl_dynamicpo.recsys import read_examples, sample_path


def test_file_candidates_are_the_files_lists_and_leak_free_ones_are_redrawn():
    files = {"train_file": str(sample_path("train")), "eval_file": str(sample_path("val")),
             "items_file": str(sample_path("items"))}  # fmt: skip
    as_read = read_examples(files["eval_file"])
    kept = load_rec_data(RecDataArguments(**files, candidates="file"), need=("eval",)).eval
    assert [ex.candidates for ex in kept] == [ex.candidates for ex in as_read]
    redrawn = load_rec_data(RecDataArguments(**files), need=("eval",)).eval
    assert [ex.target for ex in redrawn] == [ex.target for ex in as_read]
    assert all(ex.target in ex.candidates for ex in redrawn)
    assert sum(a.candidates != b.candidates for a, b in zip(redrawn, as_read)) > 0.9 * len(as_read)


def test_public_is_refused_with_the_new_name():
    from trl_dynamicpo.cli.parsing import parse_command

    message = r"candidates='public' is now written candidates='file'.*leak the target"
    with pytest.raises(ValueError, match=message):
        RecDataArguments(candidates="public")
    with pytest.raises(ValueError, match=message):
        resolve_recipe({"candidates": "public"}, "eval")
    with pytest.raises(ValueError, match=message):
        parse_command("eval", argv=["--candidates", "public"])
    with pytest.raises(ValueError, match=r"candidates='papers'; choose one of \['leak_free', 'file'\]"):
        RecDataArguments(candidates="papers")
