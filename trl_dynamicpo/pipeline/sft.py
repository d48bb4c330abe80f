"""`run_sft`: supervised fine-tuning on (prompt, target item), the first stage of the paper's recipe (`trl-dynamicpo sft`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .arguments import CANDIDATE_MODES, RecDataArguments
from .data import load_rec_data, prompt_builder
from .modeling import load_tokenizer, sft_model_inputs
from .runtime import setup_logging
from .training import finish_training, rank_eval_callback, train_with_callbacks


logger = logging.getLogger(__name__)


def run_sft(data_args: RecDataArguments, training_args, model_args, callbacks: Sequence | None = None):
    """Fine-tune `model_args.model_name_or_path` to answer each prompt with its target; returns the trainer.

    The arguments are `resolve_recipe(recipe, "sft")` (`RecDataArguments`, `trl.SFTConfig`, `trl.ModelConfig`);
    `callbacks` are added to the trainer's. Saves the model, the trainer state, a model card and the run record.
    """
    from trl_dynamicpo.recsys import sft_dataset
    from trl_dynamicpo.sft_trainer import CompactSFTTrainer

    setup_logging(training_args)
    path, peft_config, quantization_config = sft_model_inputs(model_args, training_args)
    data = load_rec_data(data_args, need=("train", "eval"))
    if not data.train:
        raise ValueError("`sft` needs training prompts (train_file, or no file at all for the bundled sample).")
    builder = prompt_builder(data_args)
    tokenizer = load_tokenizer(path, model_args.model_revision, training_args.trust_remote_code)

    def dataset(examples):
        return sft_dataset(examples, builder, history_loss=data_args.history_loss, tokenizer=tokenizer)

    train_dataset = dataset(data.train)
    eval_dataset = dataset(data.eval) if data.eval and training_args.eval_strategy != "no" else None
    rank_callback = rank_eval_callback(data_args, data.eval, builder, tokenizer, training_args.per_device_eval_batch_size)
    logger.info("SFT on %d prompts (%s candidates, loss on %s), model %s", len(data.train),
                CANDIDATE_MODES[data_args.candidates],
                "history items and answer" if data_args.history_loss else "the answer", path)  # fmt: skip
    trainer = train_with_callbacks(
        CompactSFTTrainer,
        training_args,
        callbacks,
        rank_callback,
        model=path,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
    )
    finish_training(
        trainer,
        "sft",
        data.name,
        {"data": data_args, "model": model_args, "training": training_args.to_dict()},
        tags=["trl-dynamicpo", "recommendation", "sft"],
    )
    return trainer

