"""Resuming a Trainer run: the newest complete checkpoint of an output folder, never a half-written one.

    from trl_dynamicpo.checkpoints import resolve_resume

    trainer.train(resume_from_checkpoint=resolve_resume(training_args))  # "true": the newest complete checkpoint

The Trainer writes `trainer_state.json` last, after the weights, optimizer, scheduler and RNG states, so a folder
whose state is missing, unreadable (cut short) or at another step was left by a run killed while saving it.
"""

from __future__ import annotations

import json
import logging
import os
import re


logger = logging.getLogger(__name__)

__all__ = ["checkpoint_problem", "last_complete_checkpoint", "resolve_resume"]


def _checkpoint_step(name: str) -> int | None:
    """N for a Trainer checkpoint folder name `checkpoint-N`, else None."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    match = re.fullmatch(rf"{re.escape(PREFIX_CHECKPOINT_DIR)}-(\d+)", name)
    return int(match.group(1)) if match else None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint, or None when it is.

    Complete means: `trainer_state.json` exists, parses, and (for a `checkpoint-N` folder) is at step N.
    """
    from transformers.trainer import TRAINER_STATE_NAME

    state_file = os.path.join(folder, TRAINER_STATE_NAME)
    if not os.path.isfile(state_file):
        return f"no {TRAINER_STATE_NAME}"
    try:
        with open(state_file, encoding="utf-8") as handle:
            step = json.load(handle)["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {TRAINER_STATE_NAME} ({type(err).__name__}: {err})"
    folder_step = _checkpoint_step(os.path.basename(os.path.normpath(folder)))
    if folder_step is not None and folder_step != step:
        return f"{TRAINER_STATE_NAME} is at step {step}"
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest `checkpoint-N` folder of `output_dir` that is complete (see `checkpoint_problem`), or None.

    Newer incomplete folders are skipped with a warning (and left in place).
    """
    if not os.path.isdir(output_dir):
        return None
    steps = {}
    for name in os.listdir(output_dir):
        step = _checkpoint_step(name)
        if step is not None and os.path.isdir(os.path.join(output_dir, name)):
            steps[os.path.join(output_dir, name)] = step
    for folder in sorted(steps, key=steps.get, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("Not resuming from %s: %s (half-written: the run was stopped while saving it).", folder, problem)
    return None


def resolve_resume(training_args) -> str | None:
    """The checkpoint to pass to `Trainer.train(resume_from_checkpoint=...)` for `training_args`.

    `training_args.resume_from_checkpoint` may be a checkpoint path, or 'true' / 'last' for the newest complete
    checkpoint in `training_args.output_dir`. 'true' with no complete checkpoint yet starts from scratch (None), so
    the same command line restarts or resumes a job; a half-written checkpoint is never picked. A path must be a
    complete checkpoint (`FileNotFoundError` / `ValueError` otherwise).
    """
    value = training_args.resume_from_checkpoint
    if value is None or value in ("", "false", "False", "no"):
        return None
    if value in (True, "true", "True", "last", "latest"):
        last = last_complete_checkpoint(training_args.output_dir)
        if last is None:
            logger.warning("resume_from_checkpoint=%s but %s holds no complete checkpoint: starting from scratch.",
                           value, training_args.output_dir)  # fmt: skip
        return last
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a checkpoint folder.")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(f"resume_from_checkpoint={value!r} is not a complete checkpoint: {problem}.")
    return value
