"""The one seam between this package and TRL / transformers internals.

Every private or unexported name the package relies on is imported or read here, and nowhere else, so that a new
TRL release is a one-file port: `tests/test_compat.py` checks each assumption, so a renamed or moved name fails a
test instead of silently turning a feature off. Public, top-level names (`trl.DPOTrainer`, `trl.DPOConfig`,
`trl.TrlParser`, `trl.ModelConfig`, ...) are imported directly where they are used.
"""

from __future__ import annotations

import trl.trainer.utils as _trl_utils
from trl.data_utils import _tokenize, common_prefix_length, extract_prompt
from trl.models import prepare_deepspeed
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import add_fused_lm_head, create_model_from_path, get_config_model_id, pad, use_adapter


__all__ = [
    "USE_TRITON_ATTRIBUTE",
    "_tokenize",
    "add_fused_lm_head",
    "attention_implementation",
    "common_prefix_length",
    "create_model_from_path",
    "disable_gradient_checkpointing",
    "extract_prompt",
    "get_config_model_id",
    "has_fused_lm_head",
    "pad",
    "prepare_deepspeed",
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
