"""Two CPU processes (gloo, `torchrun --nproc_per_node 2`) give what one process gives.

`train` runs unchanged under torchrun: with the same global batch, the same per-step losses, the same logged
metrics (gathered over both processes, not rank 0's half of the batch) and the same trained weights as a single
process, up to float rounding. `eval` shards the prompts over the processes and reports the single-process numbers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


pytestmark = pytest.mark.slow  # torchrun launches


REPO = Path(__file__).resolve().parents[1]
STEPS = 3


def recipe(data, output_dir) -> dict:
    return {
        **data,
        "output_dir": str(output_dir),
        "max_train_samples": 4 * STEPS,
        "num_negatives": 4,
        "per_device_train_batch_size": 4,
        "max_steps": STEPS,
        "learning_rate": 2e-3,
        "lr_scheduler_type": "constant",
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
    }


def _history(output_dir: Path) -> list[dict]:
    rows = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [row for row in rows if "loss" in row]


def _weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "model.safetensors"))


def _torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "trl_dynamicpo", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def test_two_processes_match_one(slice_data, tmp_path):
    from trl_dynamicpo.cli.main import main

    one, two = tmp_path / "one", tmp_path / "two"
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe(slice_data, one)), encoding="utf-8")

    # Two processes, 2 prompts each: global batch 4. torchrun -m runs the same entry point as the console script.
    _torchrun("train", "--config", str(config), "--per_device_train_batch_size", "2", "--output_dir", str(two))

    # One process, 4 prompts per batch, in this process.
    assert main(["train", "--config", str(config)]) == 0

    record = json.loads((two / "trl_dynamicpo_run.json").read_text())
    assert record["training"]["per_device_train_batch_size"] == 2
    h1, h2 = _history(one), _history(two)
    assert [r["step"] for r in h1] == [r["step"] for r in h2] == list(range(1, STEPS + 1))
    for a, b in zip(h1, h2):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
        # Per-example statistics over all four prompts: gathered from both processes (rank 0's two prompts alone
        # would give other means, minima and maxima).
        for key in ("logps/chosen", "logps/rejected", "rewards/margins", "dynamicpo/boundary_negatives",
                    "dynamicpo/clustering_fallback", "dynamicpo/beta_mean"):  # fmt: skip
            assert b[key] == pytest.approx(a[key], abs=1e-3, rel=1e-4), (key, a["step"])
        for key in ("dynamicpo/beta_min", "dynamicpo/beta_max"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key

    w1, w2 = _weights(one), _weights(two)
    base = _weights(Path(slice_data["model_name_or_path"]))
    assert w1.keys() == w2.keys()
    changed = 0
    for name in w1:
        assert (w1[name] - w2[name]).abs().max().item() < 1e-4, name
        changed += int((w1[name] - base[name]).abs().max().item() > 1e-3)
    assert changed > len(w1) // 2, "training barely changed the weights; the comparison would prove nothing"


def test_eval_on_two_processes_matches_one(slice_data, tmp_path):
    from trl_dynamicpo.cli.main import main

    args = [*(arg for key, value in slice_data.items() for arg in (f"--{key}", value)),
            "--max_eval_samples", "7", "--batch_size", "2",
            "--protocol", "both", "--max_new_tokens", "3", "--baselines", "false", "--show_progress", "false"]  # fmt: skip
    _torchrun("eval", *args, "--output_dir", str(tmp_path / "two"))
    assert main(["eval", *args, "--output_dir", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for protocol in ("ranking", "generation"):
        assert two[protocol]["n"] == one[protocol]["n"] == 7  # an odd count: the shards differ in size
        for key, value in one[protocol].items():
            assert two[protocol][key] == pytest.approx(value, abs=1e-9), (protocol, key)
        rows = [json.loads(line) for line in (tmp_path / "two" / protocol / "predictions.jsonl").read_text().splitlines()]
        ref = [json.loads(line) for line in (tmp_path / "one" / protocol / "predictions.jsonl").read_text().splitlines()]
        assert [r["index"] for r in rows] == list(range(7))
        assert [r["target"] for r in rows] == [r["target"] for r in ref]
        if protocol == "ranking":
            assert [r["rank"] for r in rows] == [r["rank"] for r in ref]
        else:
            assert [r["answer"] for r in rows] == [r["answer"] for r in ref]
