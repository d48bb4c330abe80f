"""The one seam between this package and TRL / transformers internals.

Every private or unexported name the package relies on is imported or read here, and nowhere else, so that a new
TRL release is a one-file port: `tests/test_compat.py` checks each assumption, so a renamed or moved name fails a
test instead of silently turning a feature off. Public, top-level names (`trl.DPOTrainer`, `trl.DPOConfig`,
`trl.TrlParser`, `trl.ModelConfig`, ...) are imported directly where they are used.
"""

from __future__ import annotations

import contextlib

import trl.trainer.dpo_trainer as _dpo_trainer
import trl.trainer.utils as _trl_utils
from accelerate.utils import broadcast_object_list
from datasets.fingerprint import Hasher
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
from trl.data_utils import _tokenize, common_prefix_length, extract_prompt
from trl.models import prepare_deepspeed
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
    "INPUT_PREFIX_PEFT_TYPES",
    "KEY_PREFIX_PEFT_TYPES",
    "USE_TRITON_ATTRIBUTE",
    "_tokenize",
    "active_prompt_learning",
    "add_fused_lm_head",
    "attention_implementation",
    "backbone_of",
    "common_prefix_length",
    "create_model_from_path",
    "disable_gradient_checkpointing",
    "extract_prompt",
    "get_config_model_id",
    "has_fused_lm_head",
    "load_balancing_loss_func",
    "pad",
    "prepare_deepspeed",
    "router_aux_loss",
    "trl_utils_module",
    "use_adapter",
]

# TRL 1.16's fused LM head asks `trl.trainer.utils._use_triton(device)` whether to project only the labelled
# positions (True on CUDA/XPU with Triton) or every position (elsewhere). `compact_lm_head_on_cpu` patches it.
USE_TRITON_ATTRIBUTE = "_use_triton"
# Name of the forward `add_fused_lm_head` installs, to recognise a model that already carries the head.
_FUSED_FORWARD_NAME = "_fused_forward"


def trl_utils_module():
    """`trl.trainer.utils`, the module whose `_use_triton` the fused LM head consults."""
    return _trl_utils


def has_fused_lm_head(model) -> bool:
    """Whether `model.forward` is the forward TRL's `add_fused_lm_head` installs."""
    forward = getattr(model.forward, "__func__", None)
    return forward is not None and forward.__code__.co_name == _FUSED_FORWARD_NAME


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

    TRL 1.16 calls Mixtral's `load_balancing_loss_func` (the one every MoE family shares) with the model's
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


__all__ += [
    "DPO_PAIRWISE_COLLATORS",
    "DPO_TRAINER_HOOKS",
    "TRAINER_ATTRIBUTES",
    "global_then_local_main_first",
    "no_reference_model",
    "precompute_cache",
    "precompute_engine",
]

# DPOTrainer / Trainer methods that DynamicPOTrainer overrides. The parents call them by these names, so a rename in
# TRL would silently bypass the override; tests/test_compat.py checks that each still exists and is still called.
DPO_TRAINER_HOOKS = (
    "_prepare_dataset",
    "_set_signature_columns_if_needed",
    "_precompute_ref_logps",
    "compute_ref_log_probs",
)
# Private attributes of DPOTrainer / Trainer the subclass reads, writes or calls: the columns `Trainer` keeps when it
# removes unused ones, the per-mode metric lists `DPOTrainer.log` averages, the DeepSpeed engine of the reference
# precompute, the model hash that keys the precompute cache, and the input preparation of `prediction_step`.
TRAINER_ATTRIBUTES = ("_signature_columns", "_metrics", "_precompute_engine", "_precompute_model_hash", "_prepare_inputs")
# TRL's pairwise collators: they cannot batch K negatives.
DPO_PAIRWISE_COLLATORS = (DataCollatorForPreference, DataCollatorForVisionPreference)


def precompute_engine(trainer):
    """The DeepSpeed inference engine for reference precompute without a reference model, built once per trainer.

    Before training, the policy's parameters are still on the CPU (ZeRO-1/2) or sharded (ZeRO-3); TRL wraps the
    policy once in an inference engine and keeps it in `_precompute_engine` for every precompute pass.
    """
    if trainer._precompute_engine is None:
        trainer._precompute_engine = prepare_deepspeed(trainer.model, trainer.accelerator)
    return trainer._precompute_engine


def precompute_cache(dataset, model_hash: str | None) -> tuple[str, str]:
    """Where TRL caches precomputed reference log-probs: `(fingerprint, cache file)`, keyed by the dataset's
    fingerprint and the model's hash.

    The key is rank 0's (under ZeRO-3 the hash differs between ranks), so every rank reads the same file. Lives in
    the dataset's cache directory (a temporary one for in-memory datasets), like every `datasets` cache file.
    """
    fingerprint = [Hasher.hash((dataset._fingerprint, model_hash))]
    broadcast_object_list(fingerprint, from_process=0)
    return fingerprint[0], dataset._get_cache_file_path(fingerprint[0])


@contextlib.contextmanager
def no_reference_model(args):
    """While a `DPOTrainer` is constructed, make it load no reference model and hash no weights.

    TRL 1.16 has no reference-free switch: its constructor loads a reference model unless the policy is a PEFT model
    or `precompute_ref_log_probs` is set, and with the latter it hashes every weight of the model (the key of the
    precompute cache: seconds to minutes on a large model). For a reference-free objective neither is wanted, so the
    flag is set and TRL's `hash_module` skipped for the construction only; the subclass's `_precompute_ref_logps`
    returns the datasets unchanged. Under FSDP TRL loads a reference model even then (and frees it after precompute).
    """
    flag, hasher = args.precompute_ref_log_probs, _dpo_trainer.hash_module
    args.precompute_ref_log_probs = True
    _dpo_trainer.hash_module = _no_hash
    try:
        yield
    finally:
        args.precompute_ref_log_probs = flag
        _dpo_trainer.hash_module = hasher


def _no_hash(module) -> None:
    return None
