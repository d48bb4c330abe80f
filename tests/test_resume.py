"""Stopping a run and resuming it gives the same losses and weights as one uninterrupted run.

In process (`resolve_recipe` + `run_train`): a `train` run stopped after a checkpoint. Through the console script: `trl-dynamicpo sft` and `train`
killed with SIGKILL between two checkpoints and started again with `--resume_from_checkpoint true`. A checkpoint
half-written when the run was killed (its `trainer_state.json`, the file the Trainer writes last, missing or cut
short) is never the resume point.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback


pytestmark = pytest.mark.slow  # trainings, and runs killed in subprocesses


STEPS, STOP = 6, 3


class StopAfter(TrainerCallback):
    """Interrupt training after `step` optimizer steps (as a preempted job would, right after a checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _run(config: Path, output_dir: Path, callbacks=None, **overrides):
    from trl_dynamicpo.pipeline import resolve_recipe, run_train

    args = resolve_recipe(config, "train", overrides={"output_dir": str(output_dir), **overrides})
    run_train(*args, callbacks=callbacks)


def _losses(output_dir: Path) -> dict[int, float]:
    rows = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def test_resume_matches_uninterrupted_run(slice_data, tmp_path):
    from safetensors.torch import load_file

    config = tmp_path / "recipe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **slice_data,
                "max_train_samples": 16,  # 4 batches per epoch: the resumed run restarts mid-epoch 1
                "num_negatives": 3,
                "per_device_train_batch_size": 4,
                "max_steps": STEPS,
                "learning_rate": 2e-3,
                "warmup_steps": 2,
                "gradient_checkpointing": False,
                "bf16": False,
                "report_to": "none",
                "logging_steps": 1,
                "save_strategy": "steps",
                "save_steps": STOP,
                "disable_tqdm": True,
                "seed": 0,
            }
        ),
        encoding="utf-8",
    )
    full, interrupted = tmp_path / "full", tmp_path / "interrupted"
    _run(config, full)
    _run(config, interrupted, callbacks=[StopAfter(STOP)])
    assert (interrupted / f"checkpoint-{STOP}").is_dir()
    assert max(_losses(interrupted)) == STOP
    # The same call with `resume_from_checkpoint="true"` picks up the newest checkpoint of output_dir.
    _run(config, interrupted, resume_from_checkpoint="true")

    expected, resumed = _losses(full), _losses(interrupted)
    assert sorted(expected) == sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(STOP + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step
    assert len({round(expected[s], 6) for s in range(STOP + 1, STEPS + 1)}) > 1, "losses did not move"
    a, b = load_file(str(full / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-6, name


# ----------------------------------------------------------------------------------------------------------------
# Killed with SIGKILL, through the console script

KILL_STEPS, SAVE_EVERY, KILL_AFTER = 6, 3, 4  # checkpoints at 3 and 6; killed after step 4, before step 5

# Loaded at start-up by the killed run's interpreter only (its PYTHONPATH): once `global_step` reaches the step
# given, the run announces its pid and waits, so that the test kills it at a known point between two checkpoints.
HANG_HOOK = """
import os, time
from pathlib import Path
import transformers

_training_step = transformers.Trainer.training_step

def training_step(self, *args, **kwargs):
    if self.state.global_step == int(os.environ["HANG_AT_STEP"]):
        Path(os.environ["HANG_MARKER"]).write_text(str(os.getpid()))
        while True:
            time.sleep(1)
    return _training_step(self, *args, **kwargs)

transformers.Trainer.training_step = training_step
"""


def _console() -> list[str]:
    console = shutil.which("trl-dynamicpo")
    return [console] if console else [sys.executable, "-m", "trl_dynamicpo"]


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore", **extra}  # fmt: skip


def _run_console(*args, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([*_console(), *args], capture_output=True, text=True, env=env or _env(), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def _run_and_kill(tmp_path: Path, *args) -> None:
    """Run the command until it has finished step KILL_AFTER (after the first checkpoint), then SIGKILL it."""
    hook = tmp_path / "hang_hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_HOOK, encoding="utf-8")
    marker = tmp_path / "hanging.pid"
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    env = _env(PYTHONPATH=path, HANG_AT_STEP=str(KILL_AFTER), HANG_MARKER=str(marker))
    process = subprocess.Popen([*_console(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 600
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), f"the run did not reach step {KILL_AFTER}:\n{process.communicate(timeout=60)[0][-5000:]}"
    assert int(marker.read_text()) == process.pid
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _kill_recipe(data, out: Path) -> dict:
    return {
        **data,
        "max_train_samples": 16,  # 4 batches per epoch: the killed run stops mid-epoch 2
        "num_negatives": 3,
        "per_device_train_batch_size": 4,
        "max_steps": KILL_STEPS,
        "warmup_steps": 2,
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": SAVE_EVERY,
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        "sft": {"output_dir": str(out / "sft"), "learning_rate": 5e-3},
        "train": {"output_dir": str(out / "train"), "learning_rate": 2e-3},
    }


def _assert_same_end(expected: Path, resumed: Path) -> None:
    from safetensors.torch import load_file

    a, b = _losses(expected), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, KILL_STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    assert len({round(v, 6) for v in a.values()}) > 1, "losses did not move"
    wa, wb = load_file(str(expected / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max().item() < 1e-6, name


@pytest.mark.parametrize("command", ["sft", "train"])
def test_killed_run_resumes_to_the_same_end(slice_data, tmp_path, command):
    from trl_dynamicpo.cli.main import main

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(_kill_recipe(slice_data, killed)), encoding="utf-8")
    out = killed / command

    _run_and_kill(tmp_path, command, "--config", str(config))
    assert (out / f"checkpoint-{SAVE_EVERY}" / "trainer_state.json").exists()
    assert not (out / f"checkpoint-{KILL_STEPS}").exists() and not (out / "model.safetensors").exists()
    if command == "train":
        # As if the run had also been killed while writing checkpoint-6: weights written, trainer_state.json cut
        # short. It is newer, but it must not be the resume point.
        half = out / f"checkpoint-{KILL_STEPS}"
        shutil.copytree(out / f"checkpoint-{SAVE_EVERY}", half)
        state = (half / "trainer_state.json").read_text()
        (half / "trainer_state.json").write_text(state[: len(state) // 2])
    # The same command line, with `--resume_from_checkpoint true`.
    result = _run_console(command, "--config", str(config), "--resume_from_checkpoint", "true")
    if command == "train":
        assert f"Not resuming from {out / f'checkpoint-{KILL_STEPS}'}: unreadable trainer_state.json" in result.stderr

    # The uninterrupted run, in this process.
    assert main([command, "--config", str(config), "--output_dir", str(whole)]) == 0
    _assert_same_end(whole, out)
