import json
import random

import pytest

from trl_dynamicpo.cli.leak_tools import main_leak_check, main_leak_free
from trl_dynamicpo.recsys import (
    RecExample,
    leak_check,
    leak_free_candidates,
    load_sample,
    make_leak_free_file,
    read_examples,
    sample_catalogue,
    sample_path,
    write_examples,
)


@pytest.fixture(scope="module")
def public_sample():
    return load_sample("train", leak_free=False), load_sample("val", leak_free=False)


def leaky_like_public(examples, catalogue):
    """Candidate lists drawn the way the public S-DPO files were: Python's generator seeded by the target's id."""
    ids = {name: i for i, name in enumerate(catalogue)}
    out = []
    for ex in examples:
        if ex.target not in ids:  # two validation targets are spelled differently from the catalogue
            continue
        excluded = {ids[h] for h in ex.history if h in ids} | {ids[ex.target]}
        random.seed(ids[ex.target])
        drawn = random.sample(range(len(catalogue)), 19 + len(excluded))
        candidates = [catalogue[i] for i in drawn if i not in excluded][:19] + [ex.target]
        random.shuffle(candidates)
        out.append(RecExample(list(ex.history), candidates, ex.target))
    return out


def test_leak_free_lists_are_valid(public_sample):
    train, _ = public_sample
    catalogue = sample_catalogue()
    rebuilt = leak_free_candidates(train[:500], catalogue, num_candidates=20, seed=3)
    names = set(catalogue)
    for old, new in zip(train[:500], rebuilt):
        assert new.history == old.history and new.target == old.target
        assert len(new.candidates) == 20 and len(set(new.candidates)) == 20
        assert new.candidates.count(new.target) == 1
        negatives = [c for c in new.candidates if c != new.target]
        assert not set(negatives) & set(new.history)
        assert set(negatives) <= names
    # The target's slot is spread over the list, not fixed.
    slots = {ex.target_index for ex in rebuilt}
    assert len(slots) == 20


def test_leak_free_is_deterministic_and_seeded(public_sample):
    train, _ = public_sample
    catalogue = sample_catalogue()
    a = leak_free_candidates(train[:50], catalogue, seed=0)
    assert a == leak_free_candidates(train[:50], catalogue, seed=0)
    assert a != leak_free_candidates(train[:50], catalogue, seed=1)
    # Per-prompt streams: a prompt's list does not depend on the prompts after it.
    assert leak_free_candidates(train[:10], catalogue, seed=0) == a[:10]


def test_same_target_gets_different_lists():
    catalogue = [f"item{i}" for i in range(200)]
    examples = [RecExample([f"item{i}", f"item{i + 1}"], ["item150"], "item150") for i in range(0, 20, 2)]
    rebuilt = leak_free_candidates(examples, catalogue)
    lists = [frozenset(ex.candidates) for ex in rebuilt]
    assert len(set(lists)) == len(lists)
    # Overlap between two lists with the same target is what two random draws give, far from 19 shared names.
    assert max(len(a & b) for i, a in enumerate(lists) for b in lists[i + 1 :]) < 8


def test_identical_prompts_in_two_files_do_not_share_negatives():
    # Row i of a training file and row i of a validation file use different streams (history key).
    catalogue = [f"item{i}" for i in range(300)]
    train = [RecExample(["item1", "item2"], ["item9"], "item9")]
    val = [RecExample(["item3", "item4"], ["item8"], "item8")]
    a = leak_free_candidates(train, catalogue)[0]
    b = leak_free_candidates(val, catalogue)[0]
    assert len(set(a.candidates) & set(b.candidates)) < 8


def test_small_catalogue_raises():
    with pytest.raises(ValueError, match="fewer than the 19 negatives"):
        leak_free_candidates([RecExample(["a"], ["b"], "b")], [f"i{k}" for k in range(10)])


def test_leak_check_on_public_and_leak_free_lists(public_sample):
    train, val = public_sample
    catalogue = sample_catalogue()
    public = leak_check(train, val)
    assert public["n"] == 300 and public["chance"] == pytest.approx(0.05)
    # Only 3,000 training prompts here (98% with the full 47,872), still far above chance.
    assert public["hit_rate"] > 0.45

    # Rebuilding the lists the leaky way in the test gives the same picture.
    leaky = leak_check(leaky_like_public(train, catalogue), leaky_like_public(val, catalogue))
    assert leaky["hit_rate"] > 0.45

    clean = leak_check(
        leak_free_candidates(train, catalogue, seed=0),
        leak_free_candidates(val, catalogue, seed=0),
        similarity="count",
    )
    assert clean["hit_rate"] < 0.15
    assert clean["mean_overlap"] < public["mean_overlap"] / 2


def test_leak_check_exact_copy_is_found():
    train = [
        RecExample(["h"], ["a", "b", "c", "d"], "c"),
        RecExample(["h"], ["e", "f", "g", "a"], "g"),
    ]
    val = [RecExample(["x"], ["e", "f", "g", "b"], "g"), RecExample(["y"], ["a", "b", "c", "e"], "c")]
    result = leak_check(train, val)
    assert result["hit_rate"] == 1.0 and result["lookup_share"] == 1.0 and result["chance"] == 0.25


def test_make_leak_free_file_and_tools(tmp_path):
    src = sample_path("val")
    dst = tmp_path / "val.leakfree.jsonl.gz"
    make_leak_free_file(src, dst, catalogue_path=sample_path("items"), seed=0, show_progress=False)
    catalogue = set(sample_catalogue())
    rebuilt = read_examples(dst, catalogue=catalogue)
    assert rebuilt == load_sample("val", leak_free=True, seed=0)

    # Without a catalogue: negatives come from the items seen in the file.
    dst2 = tmp_path / "val2.jsonl"
    make_leak_free_file(src, dst2, show_progress=False)
    seen = {n for ex in read_examples(src, catalogue=catalogue) for n in (*ex.history, *ex.candidates)}
    assert all(set(ex.candidates) <= seen for ex in read_examples(dst2, catalogue=catalogue))

    assert main_leak_free([str(src), str(tmp_path / "cli.jsonl"), "--catalogue", str(sample_path("items"))]) == 0
    assert read_examples(tmp_path / "cli.jsonl", catalogue=catalogue) == rebuilt

    out = tmp_path / "check.json"
    train_file = write_examples(load_sample("train", leak_free=False)[:500], tmp_path / "train.jsonl")
    code = main_leak_check([str(train_file), str(src), "--catalogue", str(sample_path("items")), "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["n"] == 300 and 0 <= result["hit_rate"] <= 1
