"""trl-dynamicpo: DynamicPO (dynamic boundary negatives + dual-margin beta) as a drop-in `trl.DPOTrainer`.

Public API::

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer, multi_negative_loss

Heavy modules are imported lazily so that `trl-dynamicpo --help` and the data tools start quickly.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING


__version__ = "0.1.0"

# The trainer subclasses DPOTrainer and uses TRL helpers that move between releases (data utils, the fused LM head),
# so the supported TRL release is checked up front rather than failing obscurely mid-training.
_TRL_SUPPORTED = ("1.16",)
try:
    _trl_version = version("trl")
except PackageNotFoundError as error:  # pragma: no cover
    raise ImportError("trl-dynamicpo needs trl (pip install 'trl>=1.16,<1.17').") from error
if ".".join(_trl_version.split(".")[:2]) not in _TRL_SUPPORTED:
    raise ImportError(
        f"trl-dynamicpo {__version__} supports trl {' / '.join(_TRL_SUPPORTED)}.x, found trl {_trl_version}. "
        "Install a supported release: pip install 'trl>=1.16,<1.17'."
    )

_LAZY = {
    "DynamicPOConfig": "trl_dynamicpo.config",
    "DynamicPOTrainer": "trl_dynamicpo.trainer",
    "DataCollatorForMultiNegative": "trl_dynamicpo.packing",
    "score_completions": "trl_dynamicpo.scoring",
    "compact_lm_head_on_cpu": "trl_dynamicpo.packing",
    "multi_negative_loss": "trl_dynamicpo.losses",
}

__all__ = [
    "DataCollatorForMultiNegative",
    "DynamicPOConfig",
    "DynamicPOTrainer",
    "__version__",
    "compact_lm_head_on_cpu",
    "multi_negative_loss",
    "score_completions",
]

if TYPE_CHECKING:
    from .config import DynamicPOConfig
    from .losses import multi_negative_loss
    from .packing import DataCollatorForMultiNegative, compact_lm_head_on_cpu
    from .scoring import score_completions
    from .trainer import DynamicPOTrainer


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_dynamicpo' has no attribute {name!r}")
