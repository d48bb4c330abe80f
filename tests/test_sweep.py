"""`trl-dynamicpo sweep` end to end (smoke size, real subprocess): SFT once, a 2 x 2 grid, report files, resume."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


pytestmark = pytest.mark.slow  # sweeps in subprocesses


TEMPLATE = "History: {history}.\nCandidates: {candidates}."


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory):
    from trl_dynamicpo.recsys import PromptBuilder, load_sample, sample_catalogue
    from trl_dynamicpo.tiny import build_recommender_lm

    out = tmp_path_factory.mktemp("sweep")
    builder = PromptBuilder(template=TEMPLATE, separator=",")
    examples = load_sample("train")[:64]
    texts = [builder.build(ex, i) + builder.completion(ex.target) for i, ex in enumerate(examples)]
    model, tokenizer = build_recommender_lm(texts, sample_catalogue(), vocab_size=300, hidden_size=32, num_layers=1)
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    recipe = {
        "model_name_or_path": str(out / "base"),
        "template": TEMPLATE,
        "separator": ",",
        "history_loss": True,
        "max_train_samples": 16,
        "max_eval_samples": 8,
        "per_device_train_batch_size": 4,
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "sft": {"output_dir": str(out / "sft"), "max_steps": 2, "learning_rate": 1e-3},
        "train": {"model_name_or_path": str(out / "sft"), "max_steps": 2, "learning_rate": 1e-3, "beta": 1.0,
                  "rank_eval_samples": 4, "rank_eval_steps": 1},  # fmt: skip
        "eval": {"protocol": "both", "batch_size": 8, "max_new_tokens": 4, "show_progress": False},
        "sweep": {"sweep_dir": str(out / "results"), "ks": [1, 2], "objectives": ["dmpo"],
                  "variants": ["plain", "dynamicpo"]},  # fmt: skip
    }
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return out, path


def _sweep(recipe: Path, *flags) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "trl_dynamicpo", "sweep", "--config", str(recipe), *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def first_run(sweep_setup):
    out, recipe = sweep_setup
    done = _sweep(recipe)
    return out / "results", done


def test_sft_once_then_every_grid_point(first_run, sweep_setup):
    results, _ = first_run
    out, _ = sweep_setup
    assert (out / "sft" / "config.json").exists()
    runs = sorted(p.name for p in (results / "runs").iterdir())
    assert runs == ["dmpo-dynamicpo-k1-s0", "dmpo-dynamicpo-k2-s0", "dmpo-plain-k1-s0", "dmpo-plain-k2-s0"]
    result = json.loads((results / "runs" / "dmpo-dynamicpo-k2-s0" / "result.json").read_text())
    assert result["point"] == {"objective": "dmpo", "variant": "dynamicpo", "k": 2, "seed": 0}
    assert result["steps"] == 2
    ranking = result["eval"]["eval"]["ranking"]
    assert len(ranking["hits"]) == 8 and ranking["hr@1"] == pytest.approx(sum(ranking["hits"]) / 8)
    assert len(result["eval"]["eval"]["generation"]["hits"]) == 8
    run_record = json.loads((results / "runs" / "dmpo-dynamicpo-k2-s0" / "model" / "trl_dynamicpo_run.json").read_text())
    assert run_record["training"]["boundary_selection"] is True and run_record["training"]["num_train_epochs"]
    plain = json.loads((results / "runs" / "dmpo-plain-k2-s0" / "model" / "trl_dynamicpo_run.json").read_text())
    assert plain["training"]["boundary_selection"] is False and plain["training"]["dynamic_beta"] is False


def test_per_step_curves_hold_loss_ranking_and_gradient_share(first_run):
    results, _ = first_run
    result = json.loads((results / "runs" / "dmpo-plain-k2-s0" / "result.json").read_text())
    assert [c["step"] for c in result["curves"]] == [1, 2]
    for key in ("loss", "hr1_subset", "boundary_grad_share"):
        assert all(key in c for c in result["curves"]), key


def test_report_files(first_run):
    results, done = first_run
    with open(results / "runs.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == (1 + 4) * 2  # SFT + 4 runs, ranking and generation
    sft = [r for r in rows if r["objective"] == "sft" and r["protocol"] == "ranking"][0]
    run = [r for r in rows if r["variant"] == "dynamicpo" and r["k"] == "2" and r["protocol"] == "ranking"][0]
    assert float(run["vs_sft"]) == pytest.approx(float(run["hr@1"]) - float(sft["hr@1"]))
    summary = (results / "summary.md").read_text()
    for heading in ("The SFT model against each baseline", "Paired difference to the SFT model",
                    "DynamicPO (or an ablation) - the plain objective", "Collapse check"):  # fmt: skip
        assert heading in summary
    assert "| SFT - cooccurrence |" in summary
    assert "Paired difference" in done.stdout  # the command prints the summary
    for name in ("curves.csv", "hr1_vs_k_eval.png", "curves.png"):
        assert (results / name).stat().st_size > 0


def test_rerun_resumes_from_the_cache(first_run, sweep_setup):
    results, _ = first_run
    out, recipe = sweep_setup
    stamps = {p.name: (p / "result.json").stat().st_mtime_ns for p in (results / "runs").iterdir()}
    (results / "runs" / "dmpo-plain-k1-s0" / "result.json").unlink()  # as if killed during that run
    done = _sweep(recipe)
    assert "not retraining" in done.stderr
    after = {p.name: (p / "result.json").stat().st_mtime_ns for p in (results / "runs").iterdir()}
    assert [name for name in stamps if after[name] != stamps[name]] == ["dmpo-plain-k1-s0"]


def test_changed_settings_rerun_the_points(first_run, sweep_setup):
    results, _ = first_run
    out, recipe = sweep_setup
    _sweep(recipe, "--ks", "2", "--variants", "plain", "--train_overrides", "learning_rate=2e-3")
    result = json.loads((results / "runs" / "dmpo-plain-k2-s0" / "result.json").read_text())
    record = json.loads((results / "runs" / "dmpo-plain-k2-s0" / "model" / "trl_dynamicpo_run.json").read_text())
    assert record["training"]["learning_rate"] == 2e-3
    assert result["key"] != json.loads((results / "runs" / "dmpo-dynamicpo-k2-s0" / "result.json").read_text())["key"]
