"""trl-dynamicpo: DynamicPO (dynamic boundary negatives + dual-margin beta) as a drop-in `trl.DPOTrainer`.

Public API::

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer, multi_negative_loss

Heavy modules are imported lazily so that `trl-dynamicpo --help` and the data tools start quickly.
"""

from importlib import import_module
from typing import TYPE_CHECKING


__version__ = "0.1.0"

_LAZY = {
    "DynamicPOConfig": "trl_dynamicpo.config",
    "DynamicPOTrainer": "trl_dynamicpo.trainer",
    "DataCollatorForMultiNegative": "trl_dynamicpo.packing",
    "score_completions": "trl_dynamicpo.scoring",
    "multi_negative_loss": "trl_dynamicpo.losses",
}

__all__ = [
    "DataCollatorForMultiNegative",
    "DynamicPOConfig",
    "DynamicPOTrainer",
    "__version__",
    "multi_negative_loss",
    "score_completions",
]

if TYPE_CHECKING:
    from .config import DynamicPOConfig
    from .losses import multi_negative_loss
    from .packing import DataCollatorForMultiNegative
    from .scoring import score_completions
    from .trainer import DynamicPOTrainer


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_dynamicpo' has no attribute {name!r}")
