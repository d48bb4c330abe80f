"""The one seam between this package and TRL / transformers / PEFT internals.

Every private or unexported name the package relies on is imported, read or called here, and nowhere else, so that a
new TRL release is a one-file port: `tests/test_compat.py` checks each assumption by behaviour (values, calls,
errors), so a renamed or changed name fails a test instead of silently turning a feature off. Public, top-level names
(`trl.DPOTrainer`, `trl.DPOConfig`, `trl.TrlParser`, `trl.ModelConfig`, ...) are imported directly where they are
used. No TRL module global is ever reassigned.

The TRL releases tested are `trl_dynamicpo._TRL_TESTED` (checked at import by `trl_dynamicpo/__init__.py`).
"""

from __future__ import annotations

import contextlib

import torch
from transformers.data.data_collator import DataCollatorMixin
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from trl.data_utils import _tokenize, common_prefix_length
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference, DataCollatorForVisionPreference
from trl.trainer.utils import (
    add_fused_lm_head,
    create_model_from_path,
    get_config_model_id,
    global_then_local_main_first,
    pad,
    use_adapter,
)


__all__ = [
    "DPO_PAIRWISE_COLLATORS",
    "DPO_TRAINER_CLASS_ATTRIBUTES",
    "DataCollatorMixin",
    "DPO_TRAINER_HOOKS",
    "FUSED_HEAD_OUTPUTS",
    "INPUT_PREFIX_PEFT_TYPES",
    "KEY_PREFIX_PEFT_TYPES",
    "_tokenize",
    "active_prompt_learning",
    "add_fused_lm_head",
    "attention_implementation",
    "backbone_of",
    "common_prefix_length",
    "create_model_from_path",
    "disable_gradient_checkpointing",
    "fused_lm_head_forward",
    "labelled_positions_only",
    "get_config_model_id",
    "global_then_local_main_first",
    "has_fused_lm_head",
    "load_balancing_loss_func",
    "pad",
    "pairwise_pad_token_id",
    "prepare_inputs",
    "router_aux_loss",
    "use_adapter",
]

# ------------------------------------------------------------------------------------------- TRL's fused LM head

# Per-token fields of TRL's `FusedCausalLMOutput` the package reads (the sums per completion of `CompletionOutput`).
FUSED_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
# Name of the forward `add_fused_lm_head` installs, to recognise a model that already carries the head.
_FUSED_FORWARD_NAME = "_fused_forward"


def has_fused_lm_head(model) -> bool:
    """Whether `model.forward` is the forward TRL's `add_fused_lm_head` installs."""
    forward = getattr(model.forward, "__func__", None)
    return forward is not None and forward.__code__.co_name == _FUSED_FORWARD_NAME


@contextlib.contextmanager
def labelled_positions_only(model, labelled: torch.Tensor):
    """Inside the block, TRL's fused LM head of `model` is handed the hidden states of the `labelled` positions only.

    `labelled` is the (rows, length) mask of the positions that predict a label. A forward hook on the backbone
    (PyTorch's public hook API; nothing of TRL is replaced) keeps the hidden states of those positions as one row;
    the caller passes their labels, in the same order, as `shift_labels` of shape (1, labelled.sum()). TRL's head then
    projects exactly those positions onto the vocabulary on every device: TRL 1.16 by itself does so on CUDA / XPU
    only and projects every position of every row on CPU (same values, about twice the step time of the quickstart's
    DynamicPO stage and several times that of its SFT).
    """

    def keep_labelled(module, args, kwargs, output):
        hidden = output.last_hidden_state
        output.last_hidden_state = hidden[labelled.to(hidden.device)][None]
        return output

    handle = backbone_of(model).register_forward_hook(keep_labelled, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def fused_lm_head_forward(model, shift_labels, **model_kwargs) -> dict:
    """One forward through TRL's fused LM head, scoring pre-shifted labels: `{field: (rows, length) tensor}`.

    `shift_labels[r, t]` is the token position t predicts (-100: not scored). Each field of `FUSED_HEAD_OUTPUTS` is
    per position, 0 where the label is -100, and `None` when the head was added without it: `log_probs` (log-prob of
    the label), `entropy`, `mean_logits` (mean over the vocabulary) and `is_top1` (the label is the argmax). The
    backbone runs on `model_kwargs`; PEFT prompt tuning prepends its virtual positions (give `shift_labels` for them).
    Only the labelled positions are projected onto the vocabulary (`labelled_positions_only`).
    """
    labelled = shift_labels != -100
    with labelled_positions_only(model, labelled):
        outputs = model(**model_kwargs, shift_labels=shift_labels[labelled][None], fused_lm_head=True)
    fields = {}
    for name in FUSED_HEAD_OUTPUTS:
        value = getattr(outputs, name)
        fields[name] = None if value is None else value.new_zeros(labelled.shape).masked_scatter(labelled, value[0])
    return fields


def attention_implementation(model) -> str:
    """The attention kernel a (possibly DDP-wrapped) model runs (`config._attn_implementation`)."""
    model = getattr(model, "module", model)
    return getattr(model.config, "_attn_implementation", None) or "eager"


def backbone_of(model):
    """The module TRL's fused LM head runs before its head: `base_model` of the (PEFT-, DDP-unwrapped) causal LM."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model.base_model


def router_aux_loss(router_logits, config, token_weights):
    """MoE load-balancing loss as TRL's fused LM head computes it, each token weighted by `token_weights`.

    TRL calls Mixtral's `load_balancing_loss_func` (the one every MoE family shares) with the model's
    `num_experts` / `num_experts_per_tok` and the 2-D attention mask, which the function flattens and uses as
    per-token weights; a token counted w times is a token of weight w (`tests/test_compat.py`).

    Args:
        router_logits: the backbone's `router_logits` (one (rows * length, num_experts) tensor per MoE layer).
        config: the model's config.
        token_weights: (rows, length) weight of each position (0 for padding).
    """
    text_config = config.get_text_config()
    return load_balancing_loss_func(
        router_logits, text_config.num_experts, text_config.num_experts_per_tok, token_weights
    )


# PEFT prompt learning: virtual tokens prepended to the input embeddings (prompt tuning, P-tuning) or as a key/value
# cache prefix (prefix tuning, cartridges).
INPUT_PREFIX_PEFT_TYPES = ("PROMPT_TUNING", "P_TUNING")
KEY_PREFIX_PEFT_TYPES = ("PREFIX_TUNING", "CARTRIDGE")


def active_prompt_learning(model) -> tuple[str, int] | None:
    """`(peft_type, num_virtual_tokens)` of a PEFT model's active prompt-learning adapter.

    `None` for other models and adapters, and while the adapters are disabled (PEFT's `disable_adapter` sets
    `_adapters_disabled` and runs the base model's forward directly: no virtual tokens).
    """
    model = getattr(model, "module", model)
    if not hasattr(model, "active_peft_config") or getattr(model, "_adapters_disabled", False):
        return None
    config = model.active_peft_config
    if not config.is_prompt_learning:
        return None
    peft_type = getattr(config.peft_type, "value", config.peft_type)
    return str(peft_type), int(config.num_virtual_tokens)


# ----------------------------------------------------------------------------------- DPOTrainer hooks and state

# DPOTrainer / Trainer methods that DynamicPOTrainer overrides and that the parents call by name (a rename in TRL
# would silently bypass the override): `tests/test_compat.py` checks that constructing and training a DPOTrainer
# still calls each of them.
DPO_TRAINER_HOOKS = ("_prepare_dataset", "_precompute_ref_logps", "compute_ref_log_probs")
# Class attributes of DPOTrainer that DynamicPOTrainer sets: the model card's tags, trainer name and paper.
DPO_TRAINER_CLASS_ATTRIBUTES = ("_tag_names", "_name", "_paper")
# TRL's pairwise collators: they cannot batch K negatives.
DPO_PAIRWISE_COLLATORS = (DataCollatorForPreference, DataCollatorForVisionPreference)


def pairwise_pad_token_id(collator) -> int | None:
    """The pad token id of the text collator `DPOTrainer` builds when given none (after TRL's own pad-token check
    and fall-back to EOS); None for any other collator."""
    return collator.pad_token_id if isinstance(collator, DataCollatorForPreference) else None


def prepare_inputs(trainer, inputs: dict) -> dict:
    """`Trainer._prepare_inputs`: a collated batch on the trainer's device, as `Trainer.prediction_step` gets it."""
    return trainer._prepare_inputs(inputs)
