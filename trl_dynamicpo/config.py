"""`DynamicPOConfig`: `trl.DPOConfig` plus the multi-negative and DynamicPO options."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import DPOConfig

from .losses import OBJECTIVES


# `DPOConfig.loss_type` entries this trainer implements: "sigmoid" is the multi-negative objective chosen with
# `multi_negative_loss` (TRL's DPO loss at K = 1), "sft" the NLL term on the chosen answer (RPO).
SUPPORTED_TRL_LOSS_TYPES = ("sigmoid", "sft")
TRUNCATION_MODES = ("keep_start", "keep_end")
DUPLICATE_NEGATIVES = ("error", "remove")


def _objective_help() -> str:
    """'dmpo' (DMPO), 'sdpo' (S-DPO) or 'mppo' (MPPO, reference-free), from `losses.OBJECTIVES`."""
    names = [
        f"{o.name!r} ({o.display_name}{', reference-free' if o.reference_free else ''})" for o in OBJECTIVES.values()
    ]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


@dataclass
class DynamicPOConfig(DPOConfig):
    r"""
    Configuration for [`DynamicPOTrainer`]: everything [`~trl.DPOConfig`] offers, with `DPOConfig`'s defaults, plus
    the multi-negative objective and DynamicPO's two mechanisms (dynamic boundary negative selection and dual-margin
    beta).

    Parameters:
        multi_negative_loss (`str`, *optional*, defaults to `"dmpo"`):
            Base objective over the K negatives, a key of `trl_dynamicpo.losses.OBJECTIVES`: `"dmpo"` (DMPO, the
            paper's main objective), `"sdpo"` (S-DPO, softmax over negatives) or `"mppo"` (MPPO, reference-free, on
            sequence probabilities).
        boundary_selection (`bool`, *optional*, defaults to `True`):
            Train only on the boundary negatives: those the policy ranks at or above the chosen item, or, when there
            are none, the highest cluster of an exact 1-D 3-means of the negatives' log-probs.
        dynamic_beta (`bool`, *optional*, defaults to `True`):
            Per-negative dual-margin beta in `[beta * (1 - beta_scale), beta * (1 + beta_scale)]`.
        beta_margin (`float`, *optional*, defaults to `6.0`):
            Margin `m` of the dual-margin beta.
        beta_scale (`float`, *optional*, defaults to `0.5`):
            Scale `s` of the dual-margin beta, in `[0, 1)`.
        reference_free (`bool`, *optional*, defaults to `False`):
            Score DMPO / S-DPO on the policy's log-probabilities alone: no reference model is loaded and no
            reference forward runs (MPPO is always reference-free).
        shared_prefix (`bool`, *optional*, defaults to `True`):
            Score the prompt once per example: one packed row `[prompt | y+ | y1 | ... | yK]` with a block attention
            mask. Exactly the naive concatenation's log-probabilities at a fraction of the cost. Used only where that
            is provably exact (eager / sdpa attention, an architecture in `trl_dynamicpo.packing.PACKABLE_MODEL_TYPES`);
            other models (flash-attention, convolution / state-space / linear-attention hybrids, ALiBi, unverified
            architectures) fall back to naive rows with one warning that says why.
        duplicate_negatives (`str`, *optional*, defaults to `"error"`):
            What to do with a negative that repeats the chosen answer or an earlier negative of its row, exactly or up
            to whitespace (`" Radiohead"` and `"Radiohead"`): `"error"` makes the row invalid (see
            `drop_invalid_rows`); `"remove"` drops the repeats, keeps the first occurrence and logs how many were
            removed in which rows. A repeat would otherwise count twice in the loss, or train the answer against
            itself.
        drop_invalid_rows (`bool`, *optional*, defaults to `False`):
            Rows that are certainly data bugs (a missing or ill-typed field, a negative identical to the answer, a
            prompt or completion that tokenizes to no token, no negative left) stop the run before training with an
            error naming the row and the field. With `True` they are dropped instead, and the count and the row
            numbers are logged.

    `beta` keeps `DPOConfig`'s default, 0.1, everywhere (the loss function and the CLI too). The DynamicPO paper uses
    `beta=1.0`: the recipes set it.

    With K = 1 negative, DMPO and S-DPO with `dynamic_beta=False` are exactly TRL's DPO sigmoid loss (boundary
    selection always keeps the single negative, so it changes nothing at K = 1); with the defaults (both switches
    on) the dual-margin beta makes it differ.

    `max_length` bounds every prompt+completion sequence, as in TRL. With `truncation_mode="keep_start"` the
    completions are cut to fit after the full prompt (an example whose prompt alone reaches `max_length` is dropped
    and counted); with `"keep_end"` the prompt loses its start so that the longest completion fits, and a completion
    that is too long on its own keeps its end after the prompt's last token. Both apply to all K + 1 completions of
    an example alike, so the packed and naive layouts see the same tokens, and no negative is ever dropped on its own.
    The packed row itself is longer than `max_length` (prompt + all completions).

    Of `DPOConfig`'s objective options, `loss_type` may hold `"sigmoid"` (the objective chosen with
    `multi_negative_loss`) and `"sft"` (RPO: an NLL term on the chosen answer, weighted with `loss_weights`);
    `label_smoothing` is conservative DPO on each example's logit. The others (other `loss_type`s, `ld_alpha`,
    `use_weighting`, `f_divergence_type`) raise a `ValueError` when set to a non-default value. `docs/trl_parity.md`
    lists every `DPOConfig` option and how it is honoured.
    """

    # `DPOConfig` fields with their defaults, whose meaning here the help states.
    loss_type: list[str] = field(
        default_factory=lambda: ["sigmoid"],
        metadata={
            "help": "'sigmoid': the multi-negative objective chosen with `multi_negative_loss` (TRL's DPO loss at "
            "K = 1); add 'sft' for an NLL term on the chosen answer (RPO), weighted with `loss_weights`."
        },
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={
            "help": "Conservative DPO on each example's logit z: -(1 - eps) log sigmoid(z) - eps log sigmoid(-z), "
            "eps in [0, 0.5) the probability that a preference is flipped."
        },
    )
    multi_negative_loss: str = field(
        default="dmpo",
        metadata={
            "help": f"Base multi-negative objective: {_objective_help()}.",
            "choices": list(OBJECTIVES),
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
    reference_free: bool = field(
        default=False,
        metadata={
            "help": "Score DMPO / S-DPO on the policy's log-probs alone: no reference model, no reference forward "
            "(MPPO is always reference-free)."
        },
    )
    shared_prefix: bool = field(
        default=True,
        metadata={
            "help": "Score the prompt once per example (packed row with a block attention mask) instead of once per "
            "completion. Same log-probabilities, far less compute for many negatives. Used only where it is exact for "
            "the model (otherwise naive rows, with a warning)."
        },
    )
    duplicate_negatives: str = field(
        default="error",
        metadata={
            "help": "A negative that repeats the chosen answer or an earlier negative, exactly or up to whitespace: "
            "'error' makes the row invalid (see drop_invalid_rows); 'remove' drops the repeats and logs the count "
            "and the rows.",
            "choices": list(DUPLICATE_NEGATIVES),
        },
    )
    drop_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop rows that are certainly data bugs (missing or ill-typed field, a negative identical to the "
            "answer, a prompt or completion with no token, no negative left) and log their count and row numbers, "
            "instead of stopping before training with an error naming the row."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.multi_negative_loss not in OBJECTIVES:
            raise ValueError(
                f"multi_negative_loss={self.multi_negative_loss!r} is not supported; choose one of {tuple(OBJECTIVES)}."
            )
        if not 0.0 <= self.beta_scale < 1.0:
            raise ValueError(f"beta_scale must lie in [0, 1) so that every beta_j stays positive; got {self.beta_scale}.")
        if not math.isfinite(self.beta_margin):
            raise ValueError(f"beta_margin must be finite; got {self.beta_margin}.")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive; got {self.beta}.")
        if self.truncation_mode not in TRUNCATION_MODES:  # TRL's collator wording; TRL only checks when cutting
            raise ValueError(
                f"Unsupported truncation mode: {self.truncation_mode}, expected 'keep_start' or 'keep_end'"
            )
        if self.duplicate_negatives not in DUPLICATE_NEGATIVES:
            raise ValueError(
                f"duplicate_negatives={self.duplicate_negatives!r} is not supported; choose one of {DUPLICATE_NEGATIVES}."
            )
        other = [t for t in self.loss_type if t not in SUPPORTED_TRL_LOSS_TYPES]
        if other or "sigmoid" not in self.loss_type:
            raise ValueError(
                f"DynamicPOConfig does not implement loss_type={self.loss_type!r}: it takes 'sigmoid' (the "
                f"multi-negative objective, chosen with `multi_negative_loss`: {'/'.join(OBJECTIVES)}), optionally "
                "with 'sft' (an NLL term on the chosen answer, weighted with `loss_weights`, as in RPO)."
            )
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"label_smoothing must lie in [0.0, 0.5) (the probability that a preference is flipped, conservative "
                f"DPO); got {self.label_smoothing}."
            )
        unsupported = {
            "ld_alpha": (self.ld_alpha, None),
            "use_weighting": (self.use_weighting, False),
            "f_divergence_type": (self.f_divergence_type, "reverse_kl"),
        }
        for name, (value, default) in unsupported.items():
            if value != default:
                raise ValueError(
                    f"DynamicPOConfig does not implement {name}={value!r} (only {default!r}): it is defined on one "
                    f"chosen-rejected pair, not on K negatives. Remove {name} from your configuration."
                )

    @property
    def objective_weights(self) -> dict[str, float]:
        """Weight of each `loss_type` entry in the total loss (`loss_weights`, 1.0 each by default), as TRL sums them."""
        weights = self.loss_weights or [1.0] * len(self.loss_type)
        return {name: sum(w for t, w in zip(self.loss_type, weights) if t == name) for name in SUPPORTED_TRL_LOSS_TYPES}
