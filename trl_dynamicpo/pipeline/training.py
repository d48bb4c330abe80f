"""What the training commands share: the trainer with its callbacks, resuming, the parallelism check, saving."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..checkpoints import resolve_resume
from .records import RUN_RECORD, parallelism, write_run_record


logger = logging.getLogger(__name__)


def finish_training(trainer, command: str, dataset_name: str, record: dict[str, Any], tags: list[str]) -> None:
    """Save the model (adapter or full), the trainer state, the model card and the run record."""
    args = trainer.args
    trainer.save_model(args.output_dir)
    trainer.save_state()
    if trainer.is_world_process_zero():
        trainer.create_model_card(model_name=Path(args.output_dir).name, dataset_name=dataset_name, tags=tags)
        write_run_record(args.output_dir, command, **record, parallelism=parallelism(trainer))
        logger.info("Saved the model, trainer_state.json, README.md (model card) and %s to %s", RUN_RECORD,
                    args.output_dir)  # fmt: skip
    trainer.accelerator.wait_for_everyone()


def check_parallelism(trainer) -> None:
    """Refuse a run whose launcher asked for FSDP or DeepSpeed that the trainer's accelerator did not set up.

    accelerate (1.x) turns an FSDP config on only for GPUs and other accelerators: on CPU processes it drops the
    plugin and trains plain data-parallel, which is not what the recipe says (no sharding, other memory, other
    checkpoints). DeepSpeed runs on CPU too (gloo), so a DeepSpeed request that was not set up is refused alike.
    """
    import accelerate
    from accelerate.utils import DistributedType, parse_flag_from_env

    args, got = trainer.args, trainer.accelerator.distributed_type
    fsdp = parse_flag_from_env("ACCELERATE_USE_FSDP") or bool(args.fsdp)
    deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") or args.deepspeed is not None
    where = f"accelerate {accelerate.__version__} set up {got.value} on {trainer.accelerator.device.type}"
    if fsdp and got != DistributedType.FSDP:
        raise RuntimeError(
            f"The launcher asked for FSDP (version {os.environ.get('FSDP_VERSION', '1')}), but {where}: accelerate "
            "shards with FSDP only on GPUs and other accelerators, so this run would silently be unsharded "
            "data-parallel. Launch it on GPUs; on CPU use torchrun, recipes/accelerate/multi_gpu.yaml (DDP) or a "
            "DeepSpeed config."
        )
    if deepspeed and got != DistributedType.DEEPSPEED:
        raise RuntimeError(f"The launcher asked for DeepSpeed, but {where}; this run would silently not use it.")


def train_with_callbacks(trainer_cls, training_args, callbacks, rank_callback, **trainer_kwargs):
    """Build `trainer_cls` with the user's callbacks plus the ranking callback, and train it (resuming if asked)."""
    callbacks = [*(callbacks or []), *([rank_callback] if rank_callback is not None else [])]
    trainer = trainer_cls(args=training_args, callbacks=callbacks or None, **trainer_kwargs)
    check_parallelism(trainer)
    if rank_callback is not None:
        rank_callback.bind(trainer)
    trainer.train(resume_from_checkpoint=resolve_resume(training_args))
    return trainer


def rank_eval_callback(data_args, eval_examples, builder, tokenizer, batch_size: int):
    """`RecEvalCallback` on the first `rank_eval_samples` validation prompts, or None when off."""
    if not data_args.rank_eval_samples or not eval_examples:
        return None
    from trl_dynamicpo.recsys import RecEvalCallback

    return RecEvalCallback(
        eval_examples[: data_args.rank_eval_samples],
        builder,
        tokenizer,
        batch_size=batch_size,
        eval_steps=data_args.rank_eval_steps,
    )
