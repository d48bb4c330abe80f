"""trl-dynamicpo: DynamicPO (dynamic boundary negatives + dual-margin beta) as a drop-in `trl.DPOTrainer`.

Public API::

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer, multi_negative_loss

Heavy modules are imported lazily so that `trl-dynamicpo --help` and the data tools start quickly.
"""

import warnings
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from packaging.version import Version


__version__ = "0.1.0"

# The trainer subclasses DPOTrainer and runs every forward through TRL's fused LM head. TRL 1.15's head runs Triton
# kernels only (no CPU path: its own DPOTrainer fails on CPU), so the supported range starts at 1.16; an older TRL is
# refused up front rather than failing obscurely mid-training. A newer one is let through with one warning:
# `tests/test_compat.py` checks, by behaviour, every TRL internal the package relies on.
_TRL_TESTED = ("1.16",)  # the minor releases CI runs the tests against (`.ci/run`); the first is pyproject's minimum


def _check_trl_version(found: str) -> None:
    """Refuse a TRL older than the oldest tested minor; warn (once, at import) for one newer than the newest."""
    release = Version(found).release[:2]
    if release < Version(_TRL_TESTED[0]).release:
        raise ImportError(
            f"trl-dynamicpo {__version__} needs trl >= {_TRL_TESTED[0]} (a fused LM head that also runs on CPU), "
            f"found trl {found}: pip install 'trl>={_TRL_TESTED[0]}'."
        )
    if release > Version(_TRL_TESTED[-1]).release:
        warnings.warn(
            f"trl-dynamicpo {__version__} is tested with trl {' and '.join(_TRL_TESTED)}; trl {found} is untested. "
            "`python -m pytest tests/test_compat.py` checks the TRL internals it relies on.",
            UserWarning,
            stacklevel=3,
        )


try:
    _check_trl_version(version("trl"))
except PackageNotFoundError as error:  # pragma: no cover
    raise ImportError(f"trl-dynamicpo needs trl (pip install 'trl>={_TRL_TESTED[0]}').") from error

_LAZY = {
    "DynamicPOConfig": "trl_dynamicpo.config",
    "DynamicPOTrainer": "trl_dynamicpo.trainer",
    "DataCollatorForMultiNegative": "trl_dynamicpo.packing",
    "score_completions": "trl_dynamicpo.scoring",
    "compact_lm_head_on_cpu": "trl_dynamicpo.packing",
    "CompactSFTTrainer": "trl_dynamicpo.sft_trainer",
    "multi_negative_loss": "trl_dynamicpo.losses",
}

__all__ = [
    "CompactSFTTrainer",
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
    from .sft_trainer import CompactSFTTrainer
    from .trainer import DynamicPOTrainer


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_dynamicpo' has no attribute {name!r}")
