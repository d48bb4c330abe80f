"""The machine a run is on: accelerator detection, the CPU-friendly config defaults, and logging."""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any


def has_accelerator() -> bool:
    """True when torch sees a GPU or another accelerator (CUDA, XPU, MPS, NPU, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def cpu_defaults(dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Defaults that make the trainer configs right on a machine without an accelerator (a recipe key wins).

    * `use_cpu: true`: without it `transformers` does not set up CPU distributed training, so under `torchrun` /
      `accelerate launch` every process would silently train its own copy (`accelerate launch --cpu` sets it too).
    * `bf16: false`: TRL turns bf16 on by default, which `transformers` rejects on CPU unless `use_cpu`, and which
      is slow there anyway.
    """
    if not any(f.name == "bf16" for dc in dataclass_types for f in dataclasses.fields(dc)):
        return {}
    import torch

    if has_accelerator():
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {} if bf16_ok or not torch.cuda.is_available() else {"bf16": False}
    return {"bf16": False, "use_cpu": True}


def setup_logging(training_args=None) -> None:
    """Log to stderr at the trainer's process log level (warnings only on non-main processes)."""
    import transformers

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, level=logging.WARNING)
    if training_args is None:
        logging.getLogger("trl_dynamicpo").setLevel(logging.INFO)
        return
    level = training_args.get_process_log_level()
    logging.getLogger("trl_dynamicpo").setLevel(logging.INFO if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(level)
