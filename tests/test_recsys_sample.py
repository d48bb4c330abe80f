import gzip
import json

import pytest

from trl_dynamicpo.recsys import build_sample, load_sample, read_examples, sample_catalogue, sample_path
from trl_dynamicpo.recsys.sample import SAMPLE_DIR


def test_bundled_files_are_small_and_complete():
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir())
    assert total < 1_500_000
    assert (SAMPLE_DIR / "README.md").exists()
    assert len(sample_catalogue()) == 4606
    assert sample_path("train") == sample_path("train.jsonl.gz")
    with pytest.raises(ValueError, match="unknown sample file"):
        sample_path("test.jsonl.gz")


def test_load_sample_public_and_leak_free():
    public = load_sample("val", leak_free=False)
    clean = load_sample("val")
    assert len(public) == len(clean) == 300
    assert [ex.history for ex in public] == [ex.history for ex in clean]
    assert [ex.target for ex in public] == [ex.target for ex in clean]
    assert sum(a.candidates != b.candidates for a, b in zip(public, clean)) == 300
    assert load_sample("val", seed=1) != clean
    assert len(load_sample("train")) == 3000
    with pytest.raises(ValueError):
        load_sample("test")


def test_build_sample_is_reproducible_subset(tmp_path):
    a = build_sample(SAMPLE_DIR, tmp_path / "a", n_train=50, n_val=10, seed=0)
    b = build_sample(SAMPLE_DIR, tmp_path / "b", n_train=50, n_val=10, seed=0)
    assert a["train"].read_bytes() == b["train"].read_bytes()
    assert (tmp_path / "a" / "items.txt").read_bytes() == sample_path("items").read_bytes()
    with gzip.open(sample_path("train"), "rt", encoding="utf-8") as handle:
        source = set(handle.read().splitlines())
    with gzip.open(a["train"], "rt", encoding="utf-8") as handle:
        picked = handle.read().splitlines()
    assert len(picked) == 50 and set(picked) <= source
    assert all(json.loads(line)["trueSelection"] for line in picked)
    assert len(read_examples(a["val"], catalogue=sample_catalogue())) == 10
    c = build_sample(SAMPLE_DIR, tmp_path / "c", n_train=50, n_val=10, seed=1)
    assert c["train"].read_bytes() != a["train"].read_bytes()
    with pytest.raises(ValueError, match="asked for 5000 rows"):
        build_sample(SAMPLE_DIR, tmp_path / "d", n_train=5000, n_val=10)


def test_find_data_dir_takes_either_validation_name(tmp_path, monkeypatch):
    """A data folder holds train.jsonl.gz, items.txt and val.jsonl.gz (the sample's name) or valid.jsonl.gz (what
    `trl-dynamicpo data build` writes); a folder that lacks one is an error naming it."""
    import pytest

    from trl_dynamicpo.recsys.sample import DATA_ENV, find_data_dir, validation_file

    monkeypatch.delenv(DATA_ENV, raising=False)
    assert find_data_dir() is None
    (tmp_path / "train.jsonl.gz").write_bytes(b"")
    (tmp_path / "items.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="val.jsonl.gz or valid.jsonl.gz"):
        find_data_dir(tmp_path)
    (tmp_path / "valid.jsonl.gz").write_bytes(b"")
    assert find_data_dir(tmp_path) == tmp_path and validation_file(tmp_path) == tmp_path / "valid.jsonl.gz"
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert find_data_dir() == tmp_path
