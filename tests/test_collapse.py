"""The collapse benchmark (`benchmarks/collapse.py`): presets of `trl-dynamicpo sweep`, run end to end at smoke size."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trl_dynamicpo.recsys import sample_path


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "collapse.py"


@pytest.fixture(scope="module")
def collapse():
    spec = importlib.util.spec_from_file_location("collapse_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_presets_are_sweeps_of_the_recipe(collapse, tmp_path):
    from trl_dynamicpo.sweep import build_grid

    full = collapse.PRESETS["full"]
    grid = build_grid(full.ks, full.objectives, full.variants, full.seeds, ablation_ks=full.ablation_ks,
                      extra_seeds=full.extra_seeds, extra_seed_ks=full.extra_seed_ks)  # fmt: skip
    main = {(p.objective, p.variant, p.k) for p in grid if p.seed == 0 and p.variant in ("plain", "dynamicpo")}
    assert main == {(o, v, k) for o in ("dmpo", "sdpo", "mppo") for v in ("plain", "dynamicpo") for k in full.ks}
    assert {p.seed for p in grid} == {0, *full.extra_seeds}
    recipe = collapse.recipe({"train_file": "t", "eval_file": "v", "items_file": "i"}, full, tmp_path)
    assert recipe["history_loss"] is True and recipe["max_eval_samples"] is None  # the whole validation file
    assert recipe["train"]["model_name_or_path"] == recipe["sft"]["output_dir"]  # preference runs start from SFT
    assert recipe["eval"]["protocol"] == "both"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("collapse")
    env = {key: value for key, value in os.environ.items() if key != "TRL_DYNAMICPO_DATA"}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "smoke", "--cache-dir", str(out / "cache"), "--results-dir",
         str(out / "results"), "--eval-file", str(sample_path("val"))],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return out / "results", done


@pytest.mark.slow
def test_smoke_preset_writes_the_report(smoke):
    results, _ = smoke
    for name in ("runs.csv", "curves.csv", "summary.md", "hr1_vs_k_eval.png", "curves.png", "meta.json"):
        assert (results / name).stat().st_size > 0, name
    with open(results / "runs.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    runs = {(r["variant"], r["k"]) for r in rows if r["objective"] == "dmpo" and r["protocol"] == "ranking"}
    assert runs == {("plain", "1"), ("plain", "3"), ("dynamicpo", "1"), ("dynamicpo", "3")}
    assert all(r["n"] == "24" for r in rows)  # the preset's evaluation prompts


@pytest.mark.slow
def test_missing_data_is_said_loudly(smoke):
    results, _ = smoke
    meta = json.loads((results / "meta.json").read_text())
    assert meta["data"]["source"] == "bundled sample" and "NOTICE" in meta["notice"]
    assert "NOTICE" in (results / "summary.md").read_text()
    assert meta["data"]["files"]["train"]["name"] == "train.jsonl.gz"


@pytest.mark.slow
def test_reports_hold_no_path_of_this_machine(smoke):
    results, _ = smoke
    places = (str(REPO.parent), str(results.parent / "cache"), str(sample_path("val").parent))
    assert json.loads((results / "meta.json").read_text())["grid"]["eval_files"] == ["val.jsonl.gz"]
    for name in ("meta.json", "summary.md", "runs.csv", "curves.csv"):
        text = (results / name).read_text()
        assert not any(place in text for place in places), name


@pytest.mark.slow
def test_a_named_data_folder_must_hold_the_files(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--preset", "smoke", "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0 and "lacks" in done.stderr


def test_held_out_users_leave_the_training_file(collapse, tmp_path):
    from trl_dynamicpo.recsys import RecExample, read_examples

    rows = [RecExample(["a", "b"], ["c", "x"], "c"), RecExample(["a", "b", "c"], ["d", "x"], "d"),
            RecExample(["q"], ["r", "x"], "r"), RecExample(["q", "r"], ["s", "x"], "s")]  # fmt: skip
    assert collapse.user_sequences(rows) == [[0, 1], [2, 3]]
    files, heldout, info = collapse.prepare_data(None, "leak_free", 20, tmp_path)
    train, held = read_examples(files["train_file"]), read_examples(heldout)
    assert info["prompts"]["heldout"] == len(held) > 0 and info["prompts"]["train"] == len(train)
    assert len(train) + len(held) == 3000  # the bundled sample's training prompts, each in one file
    assert not {tuple(ex.history) for ex in held} & {tuple(ex.history) for ex in train}


@pytest.mark.slow
def test_subword_smoke_preset_logs_the_collapse_diagnostics(tmp_path):
    """The sub-word preset end to end at smoke size: names span several tokens and share them, and the report
    carries the answer's log-prob shift, the negatives' log-prob, the boundary set and the shared-token share."""
    env = {key: value for key, value in os.environ.items() if key != "TRL_DYNAMICPO_DATA"}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "subword-smoke", "--cache-dir", str(tmp_path / "cache"),
         "--results-dir", str(tmp_path / "results")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = tmp_path / "results"
    meta = json.loads((results / "meta.json").read_text())
    spelling = meta["model"]["item_spelling"]
    assert meta["model"]["item_tokens"] == "subword" and meta["sft_loss"] == "answer"
    assert spelling["mean_tokens"] > 2 and spelling["share_sharing_token"] > 0.9
    with open(results / "curves.csv", encoding="utf-8") as handle:
        curves = list(csv.DictReader(handle))
    for metric in ("chosen_logp_shift", "logp_rejected", "boundary_negatives", "answer_token_overlap"):
        values = [float(r["value"]) for r in curves if r["metric"] == metric]
        assert values and all(v == v for v in values), metric  # logged at every logging step, never NaN
    overlap = [float(r["value"]) for r in curves if r["metric"] == "answer_token_overlap"]
    assert all(0.0 <= v <= 1.0 for v in overlap) and max(overlap) > 0  # sub-word answers share tokens
    with open(results / "runs.csv", encoding="utf-8") as handle:
        runs = {(r["variant"], r["k"]) for r in csv.DictReader(handle) if r["objective"] == "dmpo"}
    assert runs == {("plain", "1"), ("plain", "3"), ("dynamicpo", "1"), ("dynamicpo", "3")}
