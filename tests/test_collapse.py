"""The collapse benchmark (`benchmarks/collapse.py`): its smallest end-to-end path and its pure helpers."""

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "collapse.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("collapse_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def collapse():
    return _load_module()


def test_grid_covers_objectives_variants_and_ablations(collapse):
    full = collapse.PRESETS["full"]
    grid = collapse.build_grid(full)
    assert len(grid) == len(set(grid))
    main = {(p.objective, p.variant, p.k) for p in grid if p.variant in ("plain", "dynamicpo")}
    assert main == {(o, v, k) for o in collapse.OBJECTIVES for v in ("plain", "dynamicpo") for k in (1, 3, 5, 10, 15, 19)}
    ablations = {(p.variant, p.k) for p in grid if p.variant in ("selection_only", "beta_only")}
    assert ablations == {(v, k) for v in ("selection_only", "beta_only") for k in full.ablation_ks}
    assert all(p.objective == "dmpo" for p in grid if p.variant in ("selection_only", "beta_only"))
    assert collapse.VARIANTS["plain"] == (False, False) and collapse.VARIANTS["dynamicpo"] == (True, True)
    smoke = collapse.build_grid(collapse.PRESETS["smoke"])
    assert len(smoke) == 2


def test_summary_table_means_over_seeds(collapse):
    rows = [
        {"kind": "po", "objective": "dmpo", "variant": "plain", "k": 5, "seed": s, "hr1": v}
        for s, v in enumerate([0.2, 0.4])
    ] + [{"kind": "reference", "objective": "sft", "variant": "sft", "k": 0, "hr1": 0.5}]
    header, body = collapse.summary_table(rows)
    assert header == ["objective", "variant", "K=5"]
    assert body == [["dmpo", "plain", "0.300±0.141 (n=2)"]]
    assert "| dmpo | plain |" in collapse.markdown_table(header, body)


def test_smoke_preset_end_to_end(tmp_path):
    out, cache = tmp_path / "results", tmp_path / "cache"
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(SCRIPT), "--preset", "smoke", "--output-dir", str(out), "--cache-dir", str(cache)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with open(out / "runs.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    for column in ("objective", "variant", "boundary_selection", "dynamic_beta", "k", "seed", "hr1", "ndcg5",
                   "best_hr1_subset", "gen_hr1", "gen_valid_ratio", "loss_final", "reward_acc_final",
                   "boundary_negatives_final", "boundary_grad_share_mean", "step_time_s"):  # fmt: skip
        assert column in columns, column
    runs = [r for r in rows if r["kind"] == "po"]
    assert {(r["objective"], r["variant"], r["k"]) for r in runs} == {("dmpo", "plain", "3"), ("dmpo", "dynamicpo", "3")}
    for r in runs:
        assert 0.0 <= float(r["hr1"]) <= 1.0 and 0.0 <= float(r["gen_valid_ratio"]) <= 1.0
        assert float(r["loss_final"]) > 0 and float(r["step_time_s"]) > 0
    references = {r["objective"] for r in rows if r["kind"] == "reference"}
    assert {"sft", "baseline:popularity", "baseline:transition"} <= references

    with open(out / "curves.csv", newline="") as handle:
        metrics = {r["metric"] for r in csv.DictReader(handle)}
    assert {"loss", "boundary_grad_share", "hr1_subset"} <= metrics
    for name in ("hr1_vs_k.png", "curves.png", "grad_share.png"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "summary.md").read_text().startswith("# Collapse benchmark")

    # The SFT model and every finished run are cached, so a rerun (or a larger preset) reuses them.
    (sft_dir,) = cache.glob("sft-leak_free-*")
    assert (sft_dir / "sft_info.json").exists() and (sft_dir / "config.json").exists()
    assert len(list(cache.glob(f"runs-{sft_dir.name}/*.json"))) == 2

    # The papers' protocol on the same data, then both folders side by side (no training in the compare step).
    public = tmp_path / "public"
    cmd = [sys.executable, str(SCRIPT), "--preset", "smoke", "--protocol", "public", "--output-dir", str(public),
           "--cache-dir", str(cache)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    side = tmp_path / "side"
    cmd = [sys.executable, str(SCRIPT), "--compare", str(out), str(public), "--output-dir", str(side)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (side / "protocols.md").read_text()
    assert "### leak_free candidates" in table and "### public candidates" in table
    assert table.count("| dmpo | dynamicpo |") == 2
    assert (side / "protocols.png").stat().st_size > 1000


def test_cache_keys_follow_file_content_not_location(collapse, tmp_path):
    first, second = tmp_path / "a" / "train.jsonl", tmp_path / "b" / "train.jsonl"
    for path, text in ((first, '{"x": 1}\n'), (second, '{"x": 1}\n')):
        path.parent.mkdir()
        path.write_text(text)
    os.utime(second, (1, 1))
    key = collapse.content_key
    assert key(collapse.file_identity(first)) == key(collapse.file_identity(second))
    second.write_text('{"x": 2}\n')
    assert key(collapse.file_identity(first)) != key(collapse.file_identity(second))
    assert key(None) is None
