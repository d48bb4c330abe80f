"""`run_train`: DynamicPO (or its baselines DMPO / S-DPO / MPPO and ablations) from an SFT model (`trl-dynamicpo train`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..variants import method_name
from .arguments import RecDataArguments
from .data import check_negatives, load_rec_data, prompt_builder
from .modeling import load_for_eval, load_tokenizer, policy_inputs, require_model_path
from .runtime import setup_logging
from .training import finish_training, rank_eval_callback, train_with_callbacks


logger = logging.getLogger(__name__)


def mine_negatives(data_args, model_args, tokenizer, examples, builder, training_args) -> dict:
    """`negatives: hard | generated`: the starting model's scores of every candidate, or its own wrong answers, as
    `preference_dataset` keyword arguments (mined once, before training, with the model loaded as `eval` loads it)."""
    import torch

    from trl_dynamicpo.recsys import generated_negatives, score_candidates


    model, _ = load_for_eval(model_args, merge_adapter=True, trust_remote_code=training_args.trust_remote_code)
    logger.info("Mining %s negatives for %d prompts with %s", data_args.negatives, len(examples),
                model_args.model_name_or_path)  # fmt: skip
    common = {"batch_size": training_args.per_device_eval_batch_size, "show_progress": not training_args.disable_tqdm}
    if data_args.negatives == "hard":
        mined = {"scores": score_candidates(model, tokenizer, examples, builder, desc="Mining hard negatives", **common)}
    else:
        mined = {"rejected_items": generated_negatives(model, tokenizer, examples, builder, data_args.num_negatives,
                                                       **common)}  # fmt: skip
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return mined


def run_train(data_args: RecDataArguments, training_args, model_args, callbacks: Sequence | None = None):
    """Preference-train `model_args.model_name_or_path` (normally an SFT output); returns the trainer.

    The arguments are `resolve_recipe(recipe, "train")` (`RecDataArguments`, `DynamicPOConfig`, `trl.ModelConfig`);
    `callbacks` are added to the trainer's. Saves the model, the trainer state, a model card and the run record.
    """
    from trl_dynamicpo.recsys import preference_dataset
    from trl_dynamicpo.trainer import DynamicPOTrainer


    setup_logging(training_args)
    path = require_model_path(model_args, "train")
    data = load_rec_data(data_args, need=("train", "eval"))
    if not data.train:
        raise ValueError("`train` needs training prompts (train_file, or no file at all for the bundled sample).")
    check_negatives(data.train, data_args.num_negatives, "training")
    builder = prompt_builder(data_args)
    k, seed = data_args.num_negatives, data_args.candidate_seed
    tokenizer = load_tokenizer(path, model_args.model_revision, training_args.trust_remote_code)
    mined = data_args.negatives != "random" and k is not None

    def dataset(examples):
        extra = mine_negatives(data_args, model_args, tokenizer, examples, builder, training_args) if mined else {}
        return preference_dataset(examples, builder, num_negatives=k, seed=seed, **extra)

    train_dataset = dataset(data.train)
    eval_dataset = None
    if data.eval and training_args.eval_strategy != "no":
        check_negatives(data.eval, k, "validation")
        eval_dataset = dataset(data.eval)
    model, ref_model, peft_config, quantization_config, how = policy_inputs(model_args, training_args)
    method = method_name(training_args)
    logger.info("%s on %d prompts, K=%s negatives; %s", method, len(data.train), k or "all", how)
    rank_callback = rank_eval_callback(data_args, data.eval, builder, tokenizer, training_args.per_device_eval_batch_size)
    trainer = train_with_callbacks(
        DynamicPOTrainer,
        training_args,
        callbacks,
        rank_callback,
        model=model,
        ref_model=ref_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        quantization_config=quantization_config,
    )
    finish_training(
        trainer,
        "train",
        data.name,
        {"method": method, "handoff": how, "data": data_args, "model": model_args, "training": training_args.to_dict()},
        tags=["trl-dynamicpo", "recommendation", method.split(" ")[0].lower(), training_args.multi_negative_loss],
    )
    return trainer

