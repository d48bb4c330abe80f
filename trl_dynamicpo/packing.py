"""Row layouts for scoring K + 1 completions of a prompt, and the log-prob gathering shared by every forward.

Two layouts carry the same information:

* **shared prefix** (default): one row per example,
  `[prompt[:-1] | prompt[-1] y+ | prompt[-1] y1 | ... | prompt[-1] yK]`. Every completion block starts with a copy
  of the prompt's last token at position P-1, attends to `prompt[:-1]` and to its own block only, and its
  positions continue from the prompt's. So each block predicts its own first token with TRL's next-token fused LM
  head, and every completion's log-probability equals that of the naive row `prompt + completion`. Tokens per
  example: P + (K + 1)(C + 1) instead of (K + 1)(P + C).
* **naive**: one row `prompt + completion` per completion, as TRL's collator builds them (the reference layout,
  and the fallback wherever packing cannot be shown to be exact: `packing_obstacle`).

Packing is exact when every layer is causal self-attention between per-token layers and positions come from
`position_ids`. Sliding-window layers get a windowed block mask (a block sees the last `window` positions of prompt +
itself, as in its naive row; one mask per layer type when full and sliding layers alternate). Convolution,
state-space and linear-attention layers, ALiBi, attention kernels without custom masks, and architectures not in
`PACKABLE_MODEL_TYPES` (those `tests/test_architectures.py` verifies) use naive rows, with one warning.

Both give `shift_labels` (the token each position predicts, -100 elsewhere) and `completion_slot` (which of the
example's completions the label belongs to, as `example * (K_max + 1) + c`, c = 0 for the chosen one), so that
`completion_logps` turns per-token log-probs into a (B, K_max + 1) table with one scatter-add.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.utils import logging

from .compat import (
    INPUT_PREFIX_PEFT_TYPES,
    KEY_PREFIX_PEFT_TYPES,
    DataCollatorMixin,
    active_prompt_learning,
    add_fused_lm_head,
    attention_implementation,
    backbone_of,
    fused_lm_head_forward,
    has_fused_lm_head,
    pad,
)
from .compat import router_aux_loss as router_aux_loss_of


logger = logging.get_logger(__name__)

PACKABLE_ATTENTION = ("eager", "sdpa")


def _pad(rows: list[list[int]], value: int, multiple: int | None) -> torch.Tensor:
    return pad([torch.tensor(r, dtype=torch.long) for r in rows], padding_value=value, pad_to_multiple_of=multiple)


@dataclass
class DataCollatorForMultiNegative(DataCollatorMixin):
    """Collate tokenized multi-negative examples into packed (shared-prefix) or naive rows.

    Each example has `prompt_ids` (list[int]), `chosen_ids` (list[int]) and `rejected_ids` (list[list[int]], K may
    differ between examples), optionally `ref_chosen_logps` (float) and `ref_rejected_logps` (list[float]; values
    past the example's K are padding and are ignored).

    Every per-negative tensor has K_max = max(`negative_slots`, the largest K of the batch) columns. `DynamicPOTrainer`
    sets `negative_slots` to the largest K of the map-style datasets it prepared, so every batch has the same width
    and `DPOTrainer`'s precompute loop can gather and cache the reference log-probs batch by batch. Padding negatives
    add no token to the rows (only columns to the per-completion tables, masked by `rejected_mask`).

    Returns a dict with `input_ids`, `position_ids`, `shift_labels`, `completion_slot` (rows x length),
    `rejected_mask` (B, K_max) bool, and either `segment_ids` (packed: 0 prompt, c + 1 completion block c, -1
    padding; the 4-D mask is built on the device by `block_attention_mask`) or `attention_mask` (naive, 2-D).
    For the shared-token diagnostic it also returns `answer_token_mask` (B, C_max) bool, the chosen completion's
    tokens other than `overlap_ignore_ids` and the leading tokens that all K + 1 completions of the example share,
    and `answer_token_in_negative` (B, K_max, C_max) bool, whether chosen
    token t of an example occurs anywhere in its negative j.
    """

    pad_token_id: int
    shared_prefix: bool = True
    pad_to_multiple_of: int | None = None
    # Tokens left out of the shared-token diagnostic: the EOS every completion ends with says nothing about the item.
    overlap_ignore_ids: tuple[int, ...] = ()
    # The fewest negative columns of a batch (see above); 0: the batch's largest K.
    negative_slots: int = 0
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        k_max = max(self.negative_slots, *(len(ex["rejected_ids"]) for ex in examples))
        width = k_max + 1
        rows, positions, labels, slots, segments = [], [], [], [], []
        for b, ex in enumerate(examples):
            prompt = list(ex["prompt_ids"])
            completions = [list(ex["chosen_ids"])] + [list(r) for r in ex["rejected_ids"]]
            if self.shared_prefix:
                row, pos, lab, slot, seg = prompt[:-1], list(range(len(prompt) - 1)), [], [], []
                lab = [-100] * len(row)
                slot = [-1] * len(row)
                seg = [0] * len(row)
                for c, comp in enumerate(completions):
                    row += [prompt[-1], *comp]
                    pos += range(len(prompt) - 1, len(prompt) + len(comp))
                    lab += [*comp, -100]
                    slot += [b * width + c] * len(comp) + [-1]
                    seg += [c + 1] * (len(comp) + 1)
                rows.append(row)
                positions.append(pos)
                labels.append(lab)
                slots.append(slot)
                segments.append(seg)
            else:
                for c, comp in enumerate(completions):
                    rows.append(prompt + comp)
                    positions.append(list(range(len(prompt) + len(comp))))
                    labels.append([-100] * (len(prompt) - 1) + comp + [-100])
                    slots.append([-1] * (len(prompt) - 1) + [b * width + c] * len(comp) + [-1])

        multiple = self.pad_to_multiple_of
        batch = {
            "input_ids": _pad(rows, self.pad_token_id, multiple),
            "position_ids": _pad(positions, 0, multiple),
            "shift_labels": _pad(labels, -100, multiple),
            "completion_slot": _pad(slots, -1, multiple),
            "rejected_mask": torch.tensor(
                [[j < len(ex["rejected_ids"]) for j in range(k_max)] for ex in examples], dtype=torch.bool
            ).reshape(len(examples), k_max),
        }
        batch.update(self._answer_tokens_in_negatives(examples, k_max))
        if self.shared_prefix:
            batch["segment_ids"] = _pad(segments, -1, multiple)
        else:
            batch["attention_mask"] = _pad([[1] * len(r) for r in rows], 0, multiple)
        if "ref_chosen_logps" in examples[0]:
            batch["ref_chosen_logps"] = torch.tensor([ex["ref_chosen_logps"] for ex in examples], dtype=torch.float32)
            # Cached columns may be wider than this batch (a cache written with more slots): past K, only padding.
            ref_rejected = [list(ex["ref_rejected_logps"])[:k_max] for ex in examples]
            batch["ref_rejected_logps"] = torch.tensor(
                [row + [0.0] * (k_max - len(row)) for row in ref_rejected], dtype=torch.float32
            ).reshape(len(examples), k_max)
        return batch

    def _answer_tokens_in_negatives(self, examples: list[dict[str, Any]], k_max: int) -> dict[str, torch.Tensor]:
        ignore = set(self.overlap_ignore_ids)
        answers = [
            [t for t in ex["chosen_ids"][_common_prefix_length(ex["chosen_ids"], *ex["rejected_ids"]) :] if t not in ignore]
            for ex in examples
        ]
        width = max(1, max(map(len, answers)))
        mask = torch.zeros(len(examples), width, dtype=torch.bool)
        shared = torch.zeros(len(examples), k_max, width, dtype=torch.bool)
        for b, (ex, answer) in enumerate(zip(examples, answers)):
            mask[b, : len(answer)] = True
            for j, negative in enumerate(ex["rejected_ids"]):
                tokens = set(negative)
                shared[b, j, : len(answer)] = torch.tensor([t in tokens for t in answer], dtype=torch.bool)
        return {"answer_token_mask": mask, "answer_token_in_negative": shared}


def _common_prefix_length(*sequences) -> int:
    """Leading tokens every sequence shares (a bare space marker before whole-word item tokens): the same token in
    the same context for every completion of the prompt, so they cancel between the answer and any negative."""
    length = 0
    for column in zip(*sequences):
        if any(token != column[0] for token in column):
            break
        length += 1
    return min(length, min(map(len, sequences)) - 1) if sequences else 0


def block_attention_mask(
    segment_ids: torch.Tensor,
    attn_implementation: str,
    dtype: torch.dtype,
    *,
    position_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
    num_prefix_keys: int = 0,
) -> torch.Tensor:
    """(rows, 1, L, num_prefix_keys + L) mask for the packed layout: causal, a completion block sees the prompt and itself.

    `sdpa` takes a boolean mask (True = attend); `eager` an additive float mask of `dtype`. Padding positions also
    attend to themselves, so that no softmax row is empty (their outputs are never read).

    Args:
        segment_ids: (rows, L) 0 for the prompt, c + 1 for completion block c, -1 for padding.
        position_ids: (rows, L) positions of the tokens; needed with `sliding_window`.
        sliding_window: a query sees only the keys less than `sliding_window` positions before it (transformers'
            convention: `q - k < window`). Positions are those of the naive row, so each block sees the last
            `window` positions of prompt + itself, exactly as in its naive row.
        num_prefix_keys: keys that precede the row (PEFT prefix tuning's virtual tokens, at positions
            `0 .. num_prefix_keys - 1`, the row's positions then start after them): every query sees them.
    """
    rows, length = segment_ids.shape
    device = segment_ids.device
    key_segments = F.pad(segment_ids, (num_prefix_keys, 0), value=0)
    query, key = segment_ids[:, :, None], key_segments[:, None, :]
    query_index = torch.arange(length, device=device)[:, None] + num_prefix_keys
    key_index = torch.arange(length + num_prefix_keys, device=device)[None, :]
    allowed = (key_index <= query_index) & ((key == 0) | (key == query)) & (key >= 0)
    if sliding_window is not None:
        if position_ids is None:
            raise ValueError("A sliding-window block mask needs the position ids of the packed row.")
        prefix_positions = torch.arange(num_prefix_keys, device=device).expand(rows, num_prefix_keys)
        key_positions = torch.cat([prefix_positions, position_ids], dim=1)
        allowed &= (position_ids[:, :, None] - key_positions[:, None, :]) < sliding_window
    allowed |= (key_index == query_index) & (query < 0)
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


# Architectures whose packed rows are checked, in tests/test_architectures.py, to give the naive rows' log-probs: every
# layer is causal self-attention (full, or a sliding window the block mask reproduces) between per-token layers, and
# positions come from `position_ids` (rotary or learned absolute embeddings). Packing a model type that is not listed
# cannot be shown to be exact, so such models are scored in naive rows.
PACKABLE_MODEL_TYPES = frozenset(
    {
        "cohere",
        "cohere2",
        "deepseek_v3",
        "falcon",
        "gemma",
        "gemma2",
        "gemma3_text",
        "glm4",
        "glm4_moe",
        "gpt2",
        "gpt_neox",
        "gpt_oss",
        "granite",
        "granitemoe",
        "llama",
        "ministral",
        "mistral",
        "mixtral",
        "olmo",
        "olmo2",
        "olmo3",
        "opt",
        "phi",
        "phi3",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "smollm3",
        "starcoder2",
    }
)
# Layer types (`config.layer_types`) the block mask reproduces; any other type (convolution, state-space, linear or
# chunked attention) mixes positions outside the attention mask.
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")
# Per-token layer types that hybrid configs list next to their attention layers.
_PER_TOKEN_LAYER_TYPES = ("mlp", "moe")


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / DeepSpeed engines


def attention_windows(config) -> dict[str, int | None]:
    """Sliding window of each attention layer type of a model (`None`: full causal attention).

    Read as transformers builds its masks: `config.layer_types` when the config has them (a `"sliding_attention"`
    layer uses `config.sliding_window`), otherwise one type for every layer, windowed when `config.sliding_window`
    is set (Mistral, Phi-3, Starcoder2).
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None) or None
    layer_types = getattr(config, "layer_types", None)
    if not layer_types:
        return {"sliding_attention": window} if window is not None else {"full_attention": None}
    types = dict.fromkeys(t for t in layer_types if t in ATTENTION_LAYER_TYPES) or {"full_attention": None}
    return {t: (window if t == "sliding_attention" else None) for t in types}


def packing_obstacle(config, attn_implementation: str | None) -> str | None:
    """Why packed rows would not give this model's naive log-probs (`None` when they do).

    Args:
        config: the model's config (a composite config is read at its top level: its `model_type` decides).
        attn_implementation: the attention kernel the model runs (`config._attn_implementation`).
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(config, "model_type", None)
    if attn_implementation not in PACKABLE_ATTENTION:
        return (
            f"the model's attention implementation {attn_implementation!r} takes no custom 4-D mask "
            f"(packing needs {' or '.join(PACKABLE_ATTENTION)})"
        )
    if getattr(text_config, "alibi", False) or model_type in ("bloom", "mpt"):
        return f"{model_type} adds ALiBi biases computed from token distances in the row, not from position ids"
    types = set(getattr(text_config, "layer_types", None) or ())
    mixing = sorted(types - set(ATTENTION_LAYER_TYPES) - set(_PER_TOKEN_LAYER_TYPES))
    if mixing:
        return (
            f"{model_type} has {'/'.join(map(repr, mixing))} layers (convolution, state-space or linear attention), "
            "which mix positions regardless of the attention mask"
        )
    if getattr(text_config, "use_bidirectional_attention", False):
        return f"{model_type} is configured with bidirectional attention"
    if model_type not in PACKABLE_MODEL_TYPES:
        return (
            f"architecture {model_type!r} is not among those whose packed rows are verified to give the naive "
            "log-probs (trl_dynamicpo.packing.PACKABLE_MODEL_TYPES)"
        )
    return None


def can_pack(model) -> bool:
    """Whether the packed layout scores `model` (possibly PEFT- or DDP-wrapped) exactly as naive rows do."""
    return packing_obstacle(_unwrap(model).config, attention_implementation(model)) is None


def resolve_shared_prefix(config, attn_implementation: str | None, requested: bool = True) -> bool:
    """`requested`, unless the model cannot be packed exactly: then warn once with the reason and return False."""
    if not requested:
        return False
    obstacle = packing_obstacle(config, attn_implementation)
    if obstacle is not None:
        logger.warning_once(
            f"shared_prefix=True: {obstacle}, so each completion is scored in its own prompt+completion row (naive "
            "layout: the same log-probs, more compute)."
        )
    return obstacle is None


def ensure_fused_lm_head(model) -> None:
    """Give `model` TRL's fused LM head (log-probs at labelled positions only, no full logits) unless it has one.

    A head that a TRL trainer already added is kept as is, with the outputs that trainer needs (SFTTrainer reads
    the entropy). Without `fused_lm_head=True` the patched forward is the original one, so generation is unchanged.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not has_fused_lm_head(target):
        add_fused_lm_head(target, outputs=("log_probs",))


@contextlib.contextmanager
def compact_lm_head_on_cpu():
    """Deprecated no-op, kept so that existing `with compact_lm_head_on_cpu():` blocks keep working.

    It used to replace a private TRL switch so that TRL 1.16's fused LM head projected only the labelled positions on
    CPU, as it does on CUDA. No TRL global is reassigned any more. DynamicPO's own forward (training, reference
    log-probs, `score_completions`, ranking) needs no context: it hands TRL's head the labelled positions only, on
    every device (`compat.fused_lm_head_forward`). For SFT, `trl_dynamicpo.CompactSFTTrainer` is `trl.SFTTrainer` doing
    the same (TRL's own `SFTTrainer` projects every position on CPU with TRL 1.16; the values are the same).
    """
    warnings.warn(
        "trl_dynamicpo.compact_lm_head_on_cpu() is deprecated and does nothing; remove the `with` block (for SFT, "
        "trl_dynamicpo.CompactSFTTrainer projects only the labelled positions).",
        FutureWarning,
        stacklevel=3,
    )
    yield


@dataclass
class CompletionOutput:
    """One forward over a collated batch, per completion: every tensor is (B, K_max + 1), column 0 the chosen
    completion, columns 1.. the negatives (0 at padding negatives).

    `entropy`, `mean_logits` and `top1` are sums over the completion's tokens of what the fused LM head computes
    (`None` when the head was added without them; `DPOTrainer` adds them to the policy); `aux_loss` is the MoE
    router load-balancing loss of the batch (`None` unless asked for).
    """

    logps: torch.Tensor
    num_tokens: torch.Tensor  # completion tokens
    sequence_tokens: torch.Tensor  # tokens of the naive row prompt + completion (what TRL's `num_tokens` counts)
    entropy: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    top1: torch.Tensor | None = None  # completion tokens that are the model's top-1 prediction
    aux_loss: torch.Tensor | None = None


@contextlib.contextmanager
def _forward_hooks(module, pre=None, post=None):
    handles = []
    if pre is not None:
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
    if post is not None:
        handles.append(module.register_forward_hook(post, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _packed_masks(model, segment_ids, position_ids, num_prefix_keys):
    """The block mask per attention layer type: one tensor, or a dict keyed by layer type when windows differ."""
    impl = attention_implementation(model)
    by_window = {}
    masks = {}
    for layer_type, window in attention_windows(_unwrap(model).config).items():
        if window not in by_window:
            by_window[window] = block_attention_mask(
                segment_ids,
                impl,
                torch.float32,
                position_ids=position_ids,
                sliding_window=window,
                num_prefix_keys=num_prefix_keys,
            )
        masks[layer_type] = by_window[window]
    return next(iter(masks.values())) if len(by_window) == 1 else masks


def _model_inputs(model, batch, input_prefix: int, key_prefix: int, prompt_learning: bool):
    """The model's keyword arguments for a collated batch, and those to hand to the model under PEFT's
    prompt-learning forward (which extends 2-D masks only): the packed layout's block mask and positions, extended to
    the virtual tokens (prompt tuning: a prefix of the shared prompt; prefix tuning: keys before every query)."""
    inputs = {
        "input_ids": batch["input_ids"],
        # Prompt tuning prepends outputs for its virtual tokens; PEFT extends `labels` for them, not `shift_labels`.
        "shift_labels": F.pad(batch["shift_labels"], (input_prefix, 0), value=-100),
        "use_cache": False,
    }
    if hasattr(_unwrap(model).config.get_text_config(), "output_router_logits"):
        # Else the fused head computes the aux loss from the attention mask, and a block mask crashes it; router
        # logits are read from the backbone instead (`forward_completions`).
        inputs["output_router_logits"] = False
    if "segment_ids" not in batch:
        inputs["attention_mask"] = batch["attention_mask"]
        if not input_prefix:  # PEFT drops (with a warning) the position ids of prompt tuning: its rows count from 0
            inputs["position_ids"] = batch["position_ids"]
        return inputs, {}
    segments, positions = batch["segment_ids"], batch["position_ids"]
    if input_prefix:
        segments = F.pad(segments, (input_prefix, 0), value=0)
        prefix_positions = torch.arange(input_prefix, device=positions.device).expand(positions.size(0), -1)
        positions = torch.cat([prefix_positions, positions + input_prefix], dim=1)
    positions = positions + key_prefix
    packed = {"attention_mask": _packed_masks(model, segments, positions, key_prefix), "position_ids": positions}
    if prompt_learning:
        return inputs, packed
    return {**inputs, **packed}, {}


def _router_token_weights(batch, input_prefix: int) -> torch.Tensor:
    """How many times each position occurs in the naive rows (TRL's aux-loss mask): a packed prompt position (and a
    virtual token) once per completion sharing it, a completion position once, padding never."""
    if "segment_ids" in batch:
        shared = (1 + batch["rejected_mask"].sum(dim=1, keepdim=True)).float()
        segments = batch["segment_ids"]
        weights = torch.where(segments == 0, shared, (segments > 0).float())
    else:
        weights = batch["attention_mask"].float()
        shared = weights.new_ones(weights.size(0), 1)
    return torch.cat([shared.expand(-1, input_prefix), weights], dim=1)


def forward_completions(model, batch: dict[str, torch.Tensor], *, router_aux_loss: bool = False) -> CompletionOutput:
    """Run `model` once over a collated batch (packed or naive rows) and sum its outputs per completion.

    The model must carry TRL's fused LM head (`ensure_fused_lm_head`): no (rows, length, vocabulary) logits are
    materialised, and only the labelled positions are projected onto the vocabulary, on CPU too
    (`compat.fused_lm_head_forward`). PEFT prompt tuning, P-tuning and prefix tuning work in both layouts.

    Args:
        model: the causal LM (PEFT-, DDP-wrapped models work).
        batch: the output of `DataCollatorForMultiNegative`, on the model's device.
        router_aux_loss: also return the MoE load-balancing loss, computed as TRL's fused head does over the naive
            rows: in packed rows a prompt position counts once per completion that shares it, so packed and naive
            layouts give the same value, and padding counts for nothing.
    """
    peft_type, num_virtual = active_prompt_learning(model) or (None, 0)
    if peft_type is not None and peft_type not in INPUT_PREFIX_PEFT_TYPES + KEY_PREFIX_PEFT_TYPES:
        raise ValueError(
            f"PEFT {peft_type} is not supported: of the prompt-learning methods, DynamicPO scores completions with "
            f"{', '.join(INPUT_PREFIX_PEFT_TYPES + KEY_PREFIX_PEFT_TYPES)}."
        )
    input_prefix = num_virtual if peft_type in INPUT_PREFIX_PEFT_TYPES else 0
    key_prefix = num_virtual if peft_type in KEY_PREFIX_PEFT_TYPES else 0
    inputs, under_peft = _model_inputs(model, batch, input_prefix, key_prefix, prompt_learning=peft_type is not None)
    captured = {}
    with contextlib.ExitStack() as stack:
        if under_peft:
            stack.enter_context(
                _forward_hooks(_unwrap(model).get_base_model(), pre=lambda mod, args, kw: (args, {**kw, **under_peft}))
            )
        if router_aux_loss:
            stack.enter_context(
                _forward_hooks(
                    backbone_of(model),
                    pre=lambda mod, args, kw: (args, {**kw, "output_router_logits": True}),
                    post=lambda mod, args, kw, output: captured.update(router_logits=output.router_logits),
                )
            )
        outputs = fused_lm_head_forward(model, **inputs)

    slots = batch["completion_slot"]
    batch_size, k_max = batch["rejected_mask"].shape
    n_slots = batch_size * (k_max + 1)
    # Unlabelled positions go to an extra slot that is dropped, so the shapes never depend on the data.
    index = torch.where(slots >= 0, slots, n_slots).reshape(-1)

    def per_completion(per_token, reduce="sum"):
        if per_token is None:
            return None
        per_token = per_token[:, -slots.size(1) :]  # prompt tuning prepends virtual positions
        per_token = per_token.float() if per_token.dtype == torch.bool else per_token
        out = per_token.new_zeros(n_slots + 1).scatter_reduce(0, index, per_token.reshape(-1), reduce=reduce)
        return out[:n_slots].view(batch_size, k_max + 1)

    num_tokens = per_completion(batch["shift_labels"] != -100)
    # A completion's last labelled position is P + C - 2 in its naive row of P + C tokens.
    sequence_tokens = torch.where(num_tokens > 0, per_completion(batch["position_ids"], reduce="amax") + 2, 0)
    aux_loss = None
    if router_aux_loss:
        weights = _router_token_weights(batch, input_prefix)
        aux_loss = router_aux_loss_of(captured["router_logits"], _unwrap(model).config, weights)
    return CompletionOutput(
        logps=per_completion(outputs["log_probs"]),
        num_tokens=num_tokens,
        sequence_tokens=sequence_tokens,
        entropy=per_completion(outputs["entropy"]),
        mean_logits=per_completion(outputs["mean_logits"]),
        top1=per_completion(outputs["is_top1"]),
        aux_loss=aux_loss,
    )


def completion_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of every completion in a collated batch, as a (B, K_max + 1) tensor.

    Column 0 is the chosen completion, columns 1.. the negatives (0 at padding). See `forward_completions`.
    """
    return forward_completions(model, batch).logps
