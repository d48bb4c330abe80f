"""`DynamicPOTrainer`: `trl.DPOTrainer` with K negatives per prompt, boundary selection and dual-margin beta.

Only the hooks differ from the parent: dataset preparation (which also fixes the collator's number of negative slots),
the collator (in place of the pairwise one `DPOTrainer` builds, with the pad token it settled), the reference log-probs
of a batch (which `DPOTrainer`'s own precompute loop calls), the loss and its metrics. Everything else (model and
processor loading, the pad token, the reference model, PEFT, QLoRA, Accelerate, DeepSpeed/FSDP, the precompute loop
and its cache, checkpoints, the model card) is `DPOTrainer`'s.
"""

from __future__ import annotations

import contextlib
import copy
import textwrap

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from transformers import PreTrainedModel
from transformers.utils import logging
from trl import DPOTrainer

from .compat import (
    DPO_PAIRWISE_COLLATORS,
    attention_implementation,
    disable_gradient_checkpointing,
    get_config_model_id,
    pairwise_pad_token_id,
    prepare_inputs,
    use_adapter,
)
from .config import DynamicPOConfig
from .losses import chosen_nll_loss, multi_negative_loss, uses_reference_model
from .packing import DataCollatorForMultiNegative, completion_logps, forward_completions, resolve_shared_prefix
from .preprocessing import check_text_only, max_negatives, prepare_preference_dataset, text_tokenizer


logger = logging.get_logger(__name__)

def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _answer_token_overlap(selected: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(answer tokens found in a selected negative, answer tokens) per example, from the collator's
    `answer_token_in_negative` (B, K, C) and `answer_token_mask` (B, C); None for a collator without them."""
    if "answer_token_in_negative" not in batch:
        return None
    mask = batch["answer_token_mask"]
    found = (batch["answer_token_in_negative"] & selected[:, :, None]).any(dim=1) & mask
    return found.sum(dim=1), mask.sum(dim=1)


# Every logged metric once: (key, value, reduction). The value is read from the step's `CompletionOutput` `o`, the
# loss statistics `s` and the collated batch `b` (`b["rejected_mask"]`: the valid negatives), per example; None
# where the run has no such value (`dynamicpo/chosen_logp_shift` without a reference). Reductions, over the
# examples of a step (gathered across processes) and then over the steps of a logging period:
#   "mean": means of both; "min" / "max": extremes of both;
#   "tokens": a (numerator, denominator) pair, the ratio of their sums within a step (token-weighted, as TRL's
#       `entropy`, `logits/*` and `mean_token_accuracy`), then the mean over the steps;
#   "total": a count summed over the training steps so far (TRL's `num_tokens`: the tokens of the prompt+completion
#       sequences, so packed and naive rows report the same number).
# Keys shared with `trl.DPOTrainer` come first, with its definitions (equal to its values at K = 1).
METRICS = (
    ("rewards/chosen", lambda o, s, b: s["chosen_rewards"], "mean"),
    ("rewards/rejected", lambda o, s, b: _masked_mean(s["rejected_rewards"], b["rejected_mask"]), "mean"),
    ("rewards/accuracies", lambda o, s, b: s["reward_accuracy"], "mean"),
    (
        "rewards/margins",
        lambda o, s, b: s["chosen_rewards"] - _masked_mean(s["rejected_rewards"], b["rejected_mask"]),
        "mean",
    ),
    ("logps/chosen", lambda o, s, b: o.logps[:, 0], "mean"),
    ("logps/rejected", lambda o, s, b: _masked_mean(o.logps[:, 1:], b["rejected_mask"]), "mean"),
    ("entropy", lambda o, s, b: (o.entropy.sum(dim=1), o.num_tokens.sum(dim=1)), "tokens"),
    ("logits/chosen", lambda o, s, b: (o.mean_logits[:, 0], o.num_tokens[:, 0]), "tokens"),
    ("logits/rejected", lambda o, s, b: (o.mean_logits[:, 1:].sum(dim=1), o.num_tokens[:, 1:].sum(dim=1)), "tokens"),
    ("mean_token_accuracy", lambda o, s, b: (o.top1[:, 0], o.num_tokens[:, 0]), "tokens"),
    ("num_tokens", lambda o, s, b: o.sequence_tokens.sum(dim=1), "total"),
    ("dynamicpo/boundary_negatives", lambda o, s, b: s["boundary_mask"].sum(dim=1), "mean"),
    ("dynamicpo/clustering_fallback", lambda o, s, b: s["used_clustering"], "mean"),
    ("dynamicpo/beta_mean", lambda o, s, b: _masked_mean(s["betas"], s["selected_mask"]), "mean"),
    (
        "dynamicpo/beta_min",
        lambda o, s, b: s["betas"].masked_fill(~s["selected_mask"], torch.finfo(s["betas"].dtype).max).amin(dim=1),
        "min",
    ),
    (
        "dynamicpo/beta_max",
        lambda o, s, b: s["betas"].masked_fill(~s["selected_mask"], torch.finfo(s["betas"].dtype).min).amax(dim=1),
        "max",
    ),
    ("dynamicpo/d_pb", lambda o, s, b: _masked_mean(s["d_pb"], s["boundary_mask"]), "mean"),
    ("dynamicpo/d_be", lambda o, s, b: _masked_mean(s["d_be"], s["boundary_mask"]), "mean"),
    ("dynamicpo/boundary_grad_share", lambda o, s, b: s["boundary_grad_share"], "mean"),
    # Collapse diagnostics: the answer's log-prob against the reference (the starting model), and the share of the
    # answer's tokens that the negatives in the loss also contain (the channel of likelihood displacement).
    ("dynamicpo/chosen_logp_shift", lambda o, s, b: s.get("chosen_logratio"), "mean"),
    ("dynamicpo/answer_token_overlap", lambda o, s, b: _answer_token_overlap(s["selected_mask"], b), "tokens"),
)
METRIC_KEYS = tuple(key for key, _, _ in METRICS)
# Logged only for MoE models whose router auxiliary loss is enabled (TRL's `aux_loss`, a per-step mean).
AUX_LOSS_KEY = "aux_loss"
_REDUCTIONS = {key: reduction for key, _, reduction in METRICS} | {AUX_LOSS_KEY: "mean"}
_OVER_STEPS = {
    "mean": lambda steps: steps.mean(dim=0),
    "tokens": lambda steps: steps.mean(dim=0),
    "min": lambda steps: steps.amin(dim=0),
    "max": lambda steps: steps.amax(dim=0),
    "total": lambda steps: steps[-1],
}


class DynamicPOTrainer(DPOTrainer):
    """Trainer for DynamicPO and the multi-negative objectives it plugs into (DMPO, S-DPO, MPPO).

    A drop-in replacement for [`~trl.DPOTrainer`]: same constructor, same model/PEFT/quantization handling, same
    logging. The dataset has `prompt`, `chosen` and `rejected` columns where `rejected` is a list of K >= 1
    negatives (K may differ between rows) or a single completion, in standard or conversational format, optionally
    with TRL's `tools` and `chat_template_kwargs` columns. With K = 1 and `dynamic_beta=False`, DMPO and S-DPO are
    TRL's DPO loss (same tokens, losses and gradients); with the defaults, boundary selection and the dual-margin beta
    on, they are not (selection keeps the single negative at K = 1; the dual-margin beta still changes beta).
    `docs/trl_parity.md` lists how every `DPOConfig` option is honoured.

    Example (the DynamicPO paper's setting is `beta=1.0`; `DynamicPOConfig` keeps `DPOConfig`'s 0.1):

    ```python
    >>> from datasets import Dataset
    >>> from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    >>> dataset = Dataset.from_list([
    ...     {"prompt": "The user listened to Muse, Placebo. Next:", "chosen": " Radiohead",
    ...      "rejected": [" Shakira", " Dolly Parton", " Slayer"]},
    ... ])
    >>> trainer = DynamicPOTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", args=DynamicPOConfig("out", beta=1.0),
    ...                            train_dataset=dataset)
    >>> trainer.train()
    ```

    Args:
        model, ref_model, data_collator, train_dataset, eval_dataset, processing_class, compute_metrics, callbacks,
        optimizers, quantization_config, peft_config: as for [`~trl.DPOTrainer`]. The reference is `ref_model`, or
            the PEFT model with its adapter disabled (or TRL's "ref" adapter), or precomputed log-probs; MPPO
            (`multi_negative_loss="mppo"`) and `reference_free=True` load no reference model and run no reference
            forward. A multimodal processor works on text-only data (its tokenizer tokenizes the text); image data is
            refused. `compute_metrics` receives the per-completion log-probs (see `prediction_step`).
        args ([`DynamicPOConfig`], *optional*): configuration; a default one is built when `None`.
    """

    _tag_names = ["trl", "dpo", "dynamicpo", "trl-dynamicpo"]
    _name = "DynamicPO"
    _paper = {
        "title": "DynamicPO: Dynamic Preference Optimization for Recommendation",
        "id": "2605.00327",
        "citation": textwrap.dedent("""\
            @inproceedings{hu2026dynamicpo,
                title        = {{DynamicPO: Dynamic Preference Optimization for Recommendation}},
                author       = {Hu and others},
                year         = 2026,
                booktitle    = {DASFAA},
                eprint       = {2605.00327},
                archivePrefix= {arXiv},
            }"""),
    }

    def __init__(
        self,
        model,
        ref_model: PreTrainedModel | None = None,
        args: DynamicPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DynamicPOConfig(f"{(name or 'model').split('/')[-1]}-DynamicPO")
        elif not isinstance(args, DynamicPOConfig):
            raise TypeError(
                f"DynamicPOTrainer needs a DynamicPOConfig (a trl.DPOConfig subclass), got {type(args).__name__}. "
                "Replace `DPOConfig(...)` by `DynamicPOConfig(...)`; every DPOConfig argument is accepted."
            )
        self._uses_reference = uses_reference_model(args)
        if not self._uses_reference:
            objective = f"multi_negative_loss={args.multi_negative_loss!r}" + (
                " with reference_free=True" if args.reference_free else ""
            )
            if ref_model is not None:
                logger.warning(f"{objective} is reference-free: the `ref_model` passed is not used.")
                ref_model = None
            if args.sync_ref_model:
                raise ValueError(f"sync_ref_model=True has no meaning for {objective}, which is reference-free.")
            if args.precompute_ref_log_probs:
                logger.warning(f"precompute_ref_log_probs=True has no effect: {objective} is reference-free.")
        if isinstance(data_collator, DPO_PAIRWISE_COLLATORS):
            raise TypeError(
                f"data_collator={type(data_collator).__name__} is TRL's pairwise collator, which cannot batch K "
                "negatives. Leave `data_collator` unset: DynamicPOTrainer builds its `DataCollatorForMultiNegative`."
            )
        for name, dataset in [("train", train_dataset), *_named_datasets(eval_dataset)]:
            if isinstance(dataset, (Dataset, IterableDataset)):
                check_text_only(next(iter(dataset)), name)  # before TRL's vision branch takes over

        # With neither a reference model, PEFT nor precomputed log-probs, DPOTrainer reloads the policy from its
        # name; an instantiated model is copied instead, which is its initial state and needs no hub access.
        if (
            ref_model is None
            and self._uses_reference
            and not isinstance(model, str)
            and peft_config is None
            and not is_peft_model(model)
            and not args.precompute_ref_log_probs
        ):
            ref_model = copy.deepcopy(model)

        # Largest K of the map-style datasets prepared so far: the collator's negative slots (`_prepare_dataset`).
        self._negative_slots = 0
        # DPOTrainer loads no reference model when reference log-probs are precomputed; for a reference-free
        # objective the precompute is `_precompute_ref_logps` returning the datasets unchanged. TRL still hashes the
        # policy's weights once (the key of its precompute cache). Set for the construction only.
        user_precompute = args.precompute_ref_log_probs
        if not self._uses_reference:
            args.precompute_ref_log_probs = True
        try:
            # Without a `data_collator`, DPOTrainer settles the pad token (its check, its error, EOS as fall-back)
            # and builds its pairwise collator, which `_use_multi_negative_collator` then replaces.
            super().__init__(
                model=model,
                ref_model=ref_model,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                compute_metrics=compute_metrics,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
            )
        finally:
            args.precompute_ref_log_probs = user_precompute
        if not self._uses_reference:
            self.precompute_ref_logps = False
            self.ref_model = None
        self._use_multi_negative_collator()
        self._step_metrics = {"train": [], "eval": []}

    def _use_multi_negative_collator(self) -> None:
        """Put `DataCollatorForMultiNegative` in place of the pairwise collator DPOTrainer builds when none is
        given, with the pad token TRL settled; give it (or the user's own) the negative slots of the datasets.

        Runs before the first batch is collated: at the start of `_precompute_ref_logps` (inside
        `DPOTrainer.__init__`) and at the end of `__init__`.
        """
        pad_token_id = pairwise_pad_token_id(self.data_collator)
        if pad_token_id is not None:
            tokenizer = text_tokenizer(self.processing_class)
            self.data_collator = DataCollatorForMultiNegative(
                pad_token_id=pad_token_id,
                shared_prefix=self._resolve_shared_prefix(self.model, self.args),
                pad_to_multiple_of=self.args.pad_to_multiple_of,
                overlap_ignore_ids=tuple(t for t in (tokenizer.eos_token_id,) if t is not None),
            )
        if isinstance(self.data_collator, DataCollatorForMultiNegative):
            self.data_collator.negative_slots = max(self.data_collator.negative_slots, self._negative_slots)

    @staticmethod
    def _resolve_shared_prefix(model, args: DynamicPOConfig) -> bool:
        """Packed rows only where they provably give the naive rows' log-probs (`packing_obstacle`: attention kernel,
        layer types, positions, verified architecture); naive rows otherwise, with one warning that says why."""
        return resolve_shared_prefix(_unwrap(model).config, attention_implementation(model), args.shared_prefix)

    # ----------------------------------------------------------------------------------------------- data hooks
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Validate and tokenize (`prepare_preference_dataset`), and widen the collator's negative slots to the
        dataset's largest K, so that every batch, of every dataset, has the same number of negative columns."""
        dataset = prepare_preference_dataset(dataset, processing_class, args, dataset_name)
        self._negative_slots = max(self._negative_slots, max_negatives(dataset) or 0)
        if hasattr(self, "data_collator"):  # `evaluate(eval_dataset=...)`; in `__init__` the collator comes later
            self._use_multi_negative_collator()
        return dataset

    # ----------------------------------------------------------------------------------------- reference hooks
    def compute_ref_log_probs(self, model, inputs):
        """Reference log-probs of a collated batch: chosen (B,) and rejected (B, K_max) float32, no gradient.

        `model` is the reference model, or the policy when there is none (PEFT: run with the adapter disabled, or
        with TRL's "ref" adapter when the policy came with a trained one). `DPOTrainer`'s precompute loop calls it
        batch by batch; K_max is the collator's fixed number of negative slots, so every batch has the same width.
        """
        adapter = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter,
            self.accelerator.autocast(),
        ):
            logps = completion_logps(model, inputs).float()
        return logps[:, 0], logps[:, 1:]

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """`DPOTrainer`'s precompute (its loop, gather and cache file) with this trainer's collator: adds
        `ref_chosen_logps` (float) and `ref_rejected_logps` (K_max floats, 0 past the row's K).

        A dataset that already has the columns is returned as is, and so is every dataset of a reference-free
        objective (no reference forward runs).
        """
        self._use_multi_negative_collator()
        if not self._uses_reference or "ref_chosen_logps" in (dataset.column_names or []):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    # ----------------------------------------------------------------------------------------------- the loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # `aux_loss_enabled` / `router_aux_loss_coef`: set by DPOTrainer.__init__ from the model and `router_aux_loss_coef`
        outputs = forward_completions(model, inputs, router_aux_loss=self.aux_loss_enabled)
        chosen_logps, rejected_logps = outputs.logps[:, 0], outputs.logps[:, 1:]
        if not self._uses_reference:
            ref_chosen, ref_rejected = None, None
        elif "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model or self.model, inputs)
        losses, stats = multi_negative_loss(
            chosen_logps,
            rejected_logps,
            ref_chosen,
            ref_rejected,
            beta=self.args.beta,
            objective=self.args.multi_negative_loss,
            boundary_selection=self.args.boundary_selection,
            dynamic_beta=self.args.dynamic_beta,
            margin=self.args.beta_margin,
            beta_scale=self.args.beta_scale,
            rejected_mask=inputs["rejected_mask"],
            reference_free=not self._uses_reference,
            label_smoothing=self.args.label_smoothing,
        )
        self._record_metrics(mode, outputs, inputs, stats)
        loss = self._total_loss(losses, outputs)
        return (loss, outputs.logps.detach()) if return_outputs else loss

    def _total_loss(self, losses, outputs):
        """TRL's sum over `loss_type` with `loss_weights` of the multi-negative objective ("sigmoid") and the NLL
        term on the chosen answer ("sft", RPO), which keeps the chosen likelihood from falling while K negatives
        push against it, plus the MoE router loss as `DPOTrainer` adds it."""
        weights = self.args.objective_weights
        loss = weights["sigmoid"] * losses.mean()
        if weights["sft"]:
            loss = loss + weights["sft"] * chosen_nll_loss(outputs.logps[:, 0], outputs.num_tokens[:, 0])
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        return loss

    # Tokens of the training sequences seen so far (TRL's `num_tokens`), kept on the device between logging steps.
    _train_tokens: torch.Tensor | int = 0

    def _record_metrics(self, mode: str, outputs, batch, stats: dict[str, torch.Tensor]) -> None:
        """Reduce the step's `METRICS` over the batch (gathered across processes) and keep them on the device.

        Nothing leaves the device here; `log` turns the accumulated tensors into floats once per logging step.
        """
        valid = batch["rejected_mask"]
        columns, entries = [], []  # entries: (key, reduction, columns of `per_example` it reads)
        for key, value, reduction in METRICS:
            parts = value(outputs, stats, batch)
            if parts is None:
                continue
            parts = parts if isinstance(parts, tuple) else (parts,)
            entries.append((key, reduction, slice(len(columns), len(columns) + len(parts))))
            columns.extend(part.detach().float() for part in parts)
        if self.aux_loss_enabled:  # a batch-level scalar: one copy per example, so a plain mean over processes
            entries.append((AUX_LOSS_KEY, "mean", slice(len(columns), len(columns) + 1)))
            columns.append(outputs.aux_loss.detach().float().expand(valid.size(0)))
        per_example = self.accelerator.gather_for_metrics(torch.stack(columns, dim=1))
        step = {}
        for key, reduction, span in entries:
            values = per_example[:, span]
            if reduction == "tokens":
                step[key] = values[:, 0].sum() / values[:, 1].sum().clamp(min=1)
            elif reduction == "total":
                if mode == "train":
                    self._train_tokens = self._train_tokens + values.sum()
                step[key] = torch.as_tensor(self._train_tokens, dtype=torch.float32, device=values.device)
            else:
                step[key] = {"mean": torch.mean, "min": torch.amin, "max": torch.amax}[reduction](values)
        self._step_metrics[mode].append(step)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        steps = self._step_metrics[mode]
        if steps:
            keys = list(steps[0])
            values = torch.stack([torch.stack([step[key] for key in keys]) for step in steps])  # (steps, keys)
            reduced = torch.stack([_OVER_STEPS[_REDUCTIONS[key]](values[:, i]) for i, key in enumerate(keys)])
            # Added to `logs` directly (with the "eval_" prefix DPOTrainer.log gives its own eval metrics).
            prefix = "eval_" if mode == "eval" else ""
            logs.update({f"{prefix}{key}": value for key, value in zip(keys, reduced.tolist())})
            steps.clear()
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Eval loss and, unless `prediction_loss_only`, the per-completion log-probs for `compute_metrics`.

        Returns `(loss, predictions, label_ids)`: `predictions` is (B, 1 + K_max), the summed log-prob of the chosen
        completion in column 0 and of the negatives after it, `-inf` where an example has fewer negatives;
        `label_ids` is the matching mask, 1 where a column holds a completion. `Trainer` pads between batches of
        different K_max with -100 in both, so use `label_ids == 1` as the mask (`docs/trl_parity.md` has an HR@1
        metric).
        """
        inputs = prepare_inputs(self, inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, logps = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        valid = F.pad(inputs["rejected_mask"], (1, 0), value=True)
        return loss.detach(), logps.float().masked_fill(~valid, float("-inf")), valid.long()


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / DeepSpeed engines


def _named_datasets(eval_dataset) -> list:
    if isinstance(eval_dataset, dict):
        return list(eval_dataset.items())
    return [] if eval_dataset is None else [("eval", eval_dataset)]
