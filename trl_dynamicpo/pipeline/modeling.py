"""Model loading for the commands: TRL's `ModelConfig` helpers, QLoRA, and the SFT -> DynamicPO handoff.

SFT -> `train` handoff (what `model_name_or_path` of `train` may point to):

* a full model folder (SFT without LoRA) or a Hub id: passed to `DynamicPOTrainer` as a path. Policy and
  reference are both that model (the trainer loads a frozen copy; with `use_peft` a fresh LoRA adapter is added
  and the reference is the same model with the adapter disabled, so no second copy is loaded).
* a LoRA adapter folder (SFT with LoRA / QLoRA, recognised by `adapter_config.json`): the base model named in the
  adapter config is loaded (in 4-bit when `load_in_4bit`), the SFT adapter is attached *trainable*, and the
  trainer adds a frozen copy of it as TRL's "ref" adapter. So the policy starts from the SFT model and the
  reference *is* the SFT model, with one base model in memory; this is what the paper's scripts do (continue the
  SFT adapter, SFT model as reference). The `lora_*` options are then ignored (the adapter exists already).
  The output folder holds the trained adapter and, under `ref/`, the frozen copy (TRL saves every adapter).
  With `use_peft: false` on a non-quantized base the adapter is merged instead and every weight is trained
  against a frozen merged copy; a 4-bit base always keeps the adapter (4-bit weights cannot be trained).

A reference-free objective (MPPO, or DMPO / S-DPO with `reference_free: true`, see `trl_dynamicpo.losses.OBJECTIVES`)
gets no reference model at all: no frozen copy is made, none is loaded.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

from ..losses import uses_reference_model


logger = logging.getLogger(__name__)


def kbit_device_map() -> dict[str, Any] | None:
    """Device map for a k-bit (bitsandbytes) model: the whole model on this process's accelerator.

    What `trl.get_kbit_device_map` did before TRL removed it: `{"": local_process_index}` on CUDA / XPU, so that
    each process of a multi-GPU run quantizes its replica on its own GPU; None elsewhere (bitsandbytes then
    keeps a CPU model on the CPU) and under DeepSpeed / FSDP, which place (and shard) the model themselves and
    reject an explicit device map (bitsandbytes then still quantizes on the process's current GPU).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if state.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return None
    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return {"": state.local_process_index}
    return None


def model_init_kwargs(model_args, trust_remote_code: bool = False) -> tuple[dict[str, Any], Any]:
    """`from_pretrained` keyword arguments from a `trl.ModelConfig`, and its quantization config (or None)."""
    from trl import get_quantization_config

    kwargs: dict[str, Any] = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
        "trust_remote_code": trust_remote_code,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["device_map"] = kbit_device_map()
    return kwargs, quantization_config


def read_adapter_config(path: str | None) -> dict | None:
    """The `adapter_config.json` of a local PEFT adapter folder, or None for anything else."""
    if not path or not os.path.isdir(path):
        return None
    config_file = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(config_file):
        return None
    with open(config_file, encoding="utf-8") as handle:
        return json.load(handle)


def adapter_base(path: str, adapter_config: dict) -> str:
    base = adapter_config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}/adapter_config.json names no `base_model_name_or_path`; cannot load the base model.")
    return base


def _create(path: str, init_kwargs: dict, quantization_config) -> Any:
    from ..compat import create_model_from_path

    kwargs = {k: v for k, v in init_kwargs.items() if v is not None or k == "device_map"}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    elif "device_map" not in kwargs:
        kwargs["device_map"] = None  # the trainer / accelerate places it; never split it with "auto" here
    return create_model_from_path(path, **kwargs)


def load_tokenizer(path: str, revision: str = "main", trust_remote_code: bool = False):
    """The tokenizer saved with a model or adapter folder, else the one of the adapter's base model."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        adapter = read_adapter_config(path)
        if adapter is None:
            raise
        return AutoTokenizer.from_pretrained(adapter_base(path, adapter), trust_remote_code=trust_remote_code)


def sft_model_inputs(model_args, training_args) -> tuple[str, Any, Any]:
    """(model path, peft_config, quantization_config) for `SFTTrainer`; sets `training_args.model_init_kwargs`."""
    from trl import get_peft_config

    path = require_model_path(model_args, "sft")
    if read_adapter_config(path) is not None:
        raise ValueError(
            f"{path} is a LoRA adapter; `sft` starts from a full model. Point `model_name_or_path` at the base model."
        )
    init, quantization_config = model_init_kwargs(model_args, training_args.trust_remote_code)
    training_args.model_init_kwargs = {**init, **(training_args.model_init_kwargs or {})}
    return path, get_peft_config(model_args), quantization_config


def require_model_path(model_args, command: str) -> str:
    if not model_args.model_name_or_path:
        raise ValueError(f"`trl-dynamicpo {command}` needs `model_name_or_path` (in the recipe or as a flag).")
    return model_args.model_name_or_path


def _no_reference(training_args) -> str:
    objective = training_args.multi_negative_loss + (" with reference_free" if training_args.reference_free else "")
    return f"no reference model ({objective} is reference-free)"


def _reference(description: str, training_args) -> str:
    """`description` of the reference model for the run record, or why there is none."""
    return description if uses_reference_model(training_args) else _no_reference(training_args)


def policy_inputs(model_args, training_args) -> tuple[Any, Any, Any, Any, str]:
    """What to pass to `DynamicPOTrainer`: (model, ref_model, peft_config, quantization_config, description).

    See the module docstring for the rules. `training_args.model_init_kwargs` is set when the trainer loads the
    model itself (a path), and cleared when the model is built here.
    """
    from trl import get_peft_config

    path = require_model_path(model_args, "train")
    init, quantization_config = model_init_kwargs(model_args, training_args.trust_remote_code)
    adapter = read_adapter_config(path)
    if adapter is None:
        training_args.model_init_kwargs = {**init, **(training_args.model_init_kwargs or {})}
        peft_config = get_peft_config(model_args)
        if peft_config is not None:
            reference = _reference(f"reference: {path} (adapter disabled)", training_args)
            how = f"policy: {path} + new LoRA adapter; {reference}"
        elif uses_reference_model(training_args):
            how = f"policy and reference: {path}"
        else:
            how = f"policy: {path}; {_no_reference(training_args)}"
        return path, None, peft_config, quantization_config, how

    from peft import PeftModel

    base_path = adapter_base(path, adapter)
    init.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = None
    base = _create(base_path, init, quantization_config)
    if model_args.use_peft or quantization_config is not None:
        if not model_args.use_peft:
            logger.warning("load_in_4bit/8bit needs adapters: continuing the SFT adapter (use_peft is implied).")
        model = PeftModel.from_pretrained(base, path, is_trainable=True)
        reference = "reference: the same base + a frozen copy of the SFT adapter (TRL's 'ref' adapter)"
        how = f"policy: {base_path} + SFT adapter {path} (trainable); " + _reference(reference, training_args)
        return model, None, None, None, how
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    model.requires_grad_(True)  # PEFT froze the base weights when it wrapped them
    ref_model = None
    if uses_reference_model(training_args):  # a full frozen copy: only for an objective that reads it
        ref_model = copy.deepcopy(model).eval()
        ref_model.requires_grad_(False)
    how = (f"policy: {base_path} with the SFT adapter {path} merged (all weights trained); "
           + _reference("reference: a frozen copy", training_args))  # fmt: skip
    return model, ref_model, None, None, how


def load_for_eval(model_args, merge_adapter: bool = True, trust_remote_code: bool = False):
    """(model, tokenizer) ready for inference on this process's device, from a model or an adapter folder."""
    from accelerate import PartialState

    path = require_model_path(model_args, "eval")
    init, quantization_config = model_init_kwargs(model_args, trust_remote_code)
    tokenizer = load_tokenizer(path, model_args.model_revision, trust_remote_code)
    adapter = read_adapter_config(path)
    if adapter is None:
        model = _create(path, init, quantization_config)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(_create(adapter_base(path, adapter), init, quantization_config), path)
        if merge_adapter and quantization_config is None:
            model = model.merge_and_unload()
    if quantization_config is None and getattr(model, "hf_device_map", None) is None:
        model.to(PartialState().device)
    model.eval()
    return model, tokenizer
