"""`trl_dynamicpo.checkpoints`: the resume point is the newest complete checkpoint, never a half-written one."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from trl_dynamicpo.checkpoints import checkpoint_problem, last_complete_checkpoint, resolve_resume


def _checkpoint(folder: Path, step: int, state: str | None = None) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights")
    if state is not None:
        (path / "trainer_state.json").write_text(state, encoding="utf-8")
    return path


def _state(step: int) -> str:
    return json.dumps({"global_step": step, "log_history": []})


def test_nothing_to_resume_starts_from_scratch(tmp_path):
    args = SimpleNamespace(output_dir=str(tmp_path / "not-yet"), resume_from_checkpoint="true")
    assert resolve_resume(args) is None
    for off in (None, "", "false", "no"):
        args.resume_from_checkpoint = off
        assert resolve_resume(args) is None


def test_newest_complete_checkpoint_is_picked_by_step_not_by_name(tmp_path):
    for step in (2, 10, 9):  # "checkpoint-9" sorts after "checkpoint-10" as a string
        _checkpoint(tmp_path, step, _state(step))
    (tmp_path / "checkpoint-11").write_text("a file, not a folder")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    for value in ("true", "last", True):
        assert resolve_resume(SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=value)) == str(
            tmp_path / "checkpoint-10"
        )


def test_half_written_checkpoints_are_skipped_with_the_reason(tmp_path, caplog):
    complete = _checkpoint(tmp_path, 3, _state(3))
    _checkpoint(tmp_path, 9)  # killed before trainer_state.json
    _checkpoint(tmp_path, 12, '{"global_step": 12, "log_hi')  # killed while writing it
    _checkpoint(tmp_path, 15, _state(14))  # not this folder's state
    args = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint="true")
    with caplog.at_level("WARNING", logger="trl_dynamicpo.checkpoints"):
        assert resolve_resume(args) == str(complete)
    for step, why in ((15, "trainer_state.json is at step 14"), (12, "unreadable trainer_state.json"),
                      (9, "no trainer_state.json")):  # fmt: skip
        assert f"Not resuming from {tmp_path / f'checkpoint-{step}'}: {why}" in caplog.text
    assert checkpoint_problem(complete) is None
    # Only half-written checkpoints: start from scratch.
    shutil.rmtree(complete)
    args.resume_from_checkpoint = "last"
    assert resolve_resume(args) is None


def test_a_path_given_must_be_a_complete_checkpoint(tmp_path):
    complete = _checkpoint(tmp_path, 3, _state(3))
    _checkpoint(tmp_path, 12, '{"global_step": 12, "log_hi')
    args = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=str(complete))
    assert resolve_resume(args) == str(complete)
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-12")
    with pytest.raises(ValueError, match=r"checkpoint-12' is not a complete checkpoint: unreadable trainer_state"):
        resolve_resume(args)
    args.resume_from_checkpoint = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="is not a checkpoint folder"):
        resolve_resume(args)
