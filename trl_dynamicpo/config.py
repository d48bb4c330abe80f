"""`DynamicPOConfig`: `trl.DPOConfig` plus the multi-negative and DynamicPO options."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DPOConfig

from .losses import LOSS_TYPES


@dataclass
class DynamicPOConfig(DPOConfig):
    r"""
    Configuration for [`DynamicPOTrainer`]: everything [`~trl.DPOConfig`] offers, plus the multi-negative objective
    and DynamicPO's two mechanisms (dynamic boundary negative selection and dual-margin beta).

    Parameters:
        multi_negative_loss (`str`, *optional*, defaults to `"dmpo"`):
            Base objective over the K negatives: `"dmpo"` (DMPO, the paper's main objective), `"sdpo"` (S-DPO,
            softmax over negatives) or `"mppo"` (MPPO, reference-free, on sequence probabilities).
        boundary_selection (`bool`, *optional*, defaults to `True`):
            Train only on the boundary negatives: those the policy ranks at or above the chosen item, or, when there
            are none, the highest cluster of an exact 1-D 3-means of the negatives' log-probs.
        dynamic_beta (`bool`, *optional*, defaults to `True`):
            Per-negative dual-margin beta in `[beta * (1 - beta_scale), beta * (1 + beta_scale)]`.
        beta_margin (`float`, *optional*, defaults to `6.0`):
            Margin `m` of the dual-margin beta.
        beta_scale (`float`, *optional*, defaults to `0.5`):
            Scale `s` of the dual-margin beta, in `[0, 1)`.
        shared_prefix (`bool`, *optional*, defaults to `True`):
            Score the prompt once per example: one packed row `[prompt | y+ | y1 | ... | yK]` with a block attention
            mask. Exactly the naive concatenation's log-probabilities at a fraction of the cost. Falls back (with a
            warning) to naive rows for attention implementations that take no custom 4-D mask.
        beta (`float`, *optional*, defaults to `1.0`):
            Base beta (the paper's value; `DPOConfig` defaults to 0.1).

    `max_length` bounds every prompt+completion sequence, as in TRL. With `truncation_mode="keep_start"` the
    completions are cut to fit after the full prompt (an example whose prompt alone reaches `max_length` is dropped
    and counted); with `"keep_end"` the prompt loses its start so that the longest completion fits. Both apply to all
    K + 1 completions of an example alike, so the packed and naive layouts see the same tokens, and no negative is
    ever dropped on its own. The packed row itself is longer than `max_length` (prompt + all completions).

    `DPOConfig` options this trainer does not implement (other `loss_type`s, `loss_weights`, `ld_alpha`,
    `use_weighting`, `f_divergence_type`, `label_smoothing`, `padding_free`, `use_liger_kernel`) raise a
    `ValueError` when set to a non-default value.
    """

    beta: float = field(
        default=1.0,
        metadata={"help": "Base beta of the preference loss (the DynamicPO paper uses 1.0)."},
    )
    multi_negative_loss: str = field(
        default="dmpo",
        metadata={
            "help": "Base multi-negative objective: 'dmpo' (DMPO), 'sdpo' (S-DPO) or 'mppo' (MPPO, reference-free).",
            "choices": list(LOSS_TYPES),
        },
    )
    boundary_selection: bool = field(
        default=True,
        metadata={"help": "Use only the boundary negatives chosen dynamically from the policy's log-probs."},
    )
    dynamic_beta: bool = field(
        default=True,
        metadata={"help": "Use the per-negative dual-margin beta instead of a constant beta."},
    )
    beta_margin: float = field(
        default=6.0,
        metadata={"help": "Margin m of the dual-margin beta (authors' current release: 6.0; first release: 2.0)."},
    )
    beta_scale: float = field(
        default=0.5,
        metadata={"help": "Scale s of the dual-margin beta: beta_j lies in [beta(1-s), beta(1+s)]."},
    )
    shared_prefix: bool = field(
        default=True,
        metadata={
            "help": "Score the prompt once per example (packed row with a block attention mask) instead of once per "
            "completion. Same log-probabilities, far less compute for many negatives."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.multi_negative_loss not in LOSS_TYPES:
            raise ValueError(
                f"multi_negative_loss={self.multi_negative_loss!r} is not supported; choose one of {LOSS_TYPES}."
            )
        if not 0.0 <= self.beta_scale < 1.0:
            raise ValueError(f"beta_scale must lie in [0, 1) so that every beta_j stays positive; got {self.beta_scale}.")
        if not math.isfinite(self.beta_margin):
            raise ValueError(f"beta_margin must be finite; got {self.beta_margin}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive; got {self.beta}.")
        unsupported = {
            "loss_type": (self.loss_type, ["sigmoid"]),
            "loss_weights": (self.loss_weights, None),
            "ld_alpha": (self.ld_alpha, None),
            "use_weighting": (self.use_weighting, False),
            "f_divergence_type": (self.f_divergence_type, "reverse_kl"),
            "label_smoothing": (self.label_smoothing, 0.0),
            "padding_free": (self.padding_free, False),
            "use_liger_kernel": (self.use_liger_kernel, False),
        }
        for name, (value, default) in unsupported.items():
            if value != default:
                raise ValueError(
                    f"DynamicPOConfig does not implement {name}={value!r} (only {default!r}); the objective is chosen "
                    f"with `multi_negative_loss` ({'/'.join(LOSS_TYPES)}). Remove {name} from your configuration."
                )
