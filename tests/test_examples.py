"""The scripts in `examples/` run end to end, offline, at a small size (real subprocesses, as a user runs them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow  # the examples in subprocesses


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_dpo_to_dynamicpo_trains_and_saves(tmp_path):
    out = tmp_path / "dpo"
    stdout = run_example("dpo_to_dynamicpo.py", "--max_steps", "2", "--output_dir", str(out), cwd=tmp_path)
    assert f"saved to {out}" in stdout
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_python_api_prints_before_and_after(tmp_path):
    stdout = run_example("python_api.py", cwd=tmp_path)
    lines = {line.split(":")[0].strip(): line for line in stdout.splitlines() if "HR@1" in line}
    assert {"random init", "after DynamicPO", "popularity"} <= set(lines)
    for line in lines.values():
        hr1 = float(line.split("HR@1")[1].split()[0])
        assert 0.0 <= hr1 <= 1.0


@pytest.mark.parametrize("launch", [True, False], ids=["launch", "run"])
def test_lastfm_end_to_end(tmp_path, launch):
    out = tmp_path / "e2e"
    args = ["--output_dir", str(out), "--max_train_samples", "64", "--max_eval_samples", "16", "--num_negatives", "3"]
    stdout = run_example("lastfm_end_to_end.py", *args, *(["--launch"] if launch else ["--compare_dmpo"]), cwd=tmp_path)
    assert (out / "recipe.yaml").exists()
    if launch:
        commands = [line for line in stdout.splitlines() if line.startswith("trl-dynamicpo ")]
        assert [c.split()[1] for c in commands] == ["sft", "eval", "train", "eval"]
        assert not (out / "sft").exists()
        return
    for folder in ("sft", "dynamicpo", "dmpo"):
        metrics = json.loads((out / folder / "eval" / "metrics.json").read_text())["ranking"]
        assert metrics["n"] == 16 and 0.0 <= metrics["hr@1"] <= metrics["hr@5"] <= 1.0
