"""Stopping a `train` run after N steps and resuming it gives the same later losses and weights as one run."""

import json
from pathlib import Path

import pytest
import yaml
from transformers import TrainerCallback


STEPS, STOP = 6, 3


class StopAfter(TrainerCallback):
    """Interrupt training after `step` optimizer steps (as a preempted job would, right after a checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def _run(config: Path, output_dir: Path, *flags, callbacks=None):
    from trl_dynamicpo.cli import train
    from trl_dynamicpo.cli.parsing import parse_command

    args = parse_command("train", train.dataclass_types(), ["--config", str(config), "--output_dir", str(output_dir), *flags])
    train.run_train(*args, callbacks=callbacks)


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
    # The same command line with `--resume_from_checkpoint true` picks up the newest checkpoint of output_dir.
    _run(config, interrupted, "--resume_from_checkpoint", "true")

    expected, resumed = _losses(full), _losses(interrupted)
    assert sorted(expected) == sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(STOP + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-6), step
    assert len({round(expected[s], 6) for s in range(STOP + 1, STEPS + 1)}) > 1, "losses did not move"
    a, b = load_file(str(full / "model.safetensors")), load_file(str(interrupted / "model.safetensors"))
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-6, name
