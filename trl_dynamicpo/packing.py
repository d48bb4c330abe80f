"""Row layouts for scoring K + 1 completions of a prompt, and the log-prob gathering shared by every forward.

Two layouts carry the same information:

* **shared prefix** (default): one row per example,
  `[prompt[:-1] | prompt[-1] y+ | prompt[-1] y1 | ... | prompt[-1] yK]`. Every completion block starts with a copy
  of the prompt's last token at position P-1, attends to `prompt[:-1]` and to its own block only, and its
  positions continue from the prompt's. So each block predicts its own first token with TRL's next-token fused LM
  head, and every completion's log-probability equals that of the naive row `prompt + completion`. Tokens per
  example: P + (K + 1)(C + 1) instead of (K + 1)(P + C).
* **naive**: one row `prompt + completion` per completion, as TRL's collator builds them (the reference layout
  and the fallback for attention kernels that take no custom 4-D mask).

Both give `shift_labels` (the token each position predicts, -100 elsewhere) and `completion_slot` (which of the
example's completions the label belongs to, as `example * (K_max + 1) + c`, c = 0 for the chosen one), so that
`completion_logps` turns per-token log-probs into a (B, K_max + 1) table with one scatter-add.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers.data.data_collator import DataCollatorMixin

from .compat import (
    USE_TRITON_ATTRIBUTE,
    add_fused_lm_head,
    attention_implementation,
    has_fused_lm_head,
    pad,
    trl_utils_module,
)


PACKABLE_ATTENTION = ("eager", "sdpa")


def _pad(rows: list[list[int]], value: int, multiple: int | None) -> torch.Tensor:
    return pad([torch.tensor(r, dtype=torch.long) for r in rows], padding_value=value, pad_to_multiple_of=multiple)


@dataclass
class DataCollatorForMultiNegative(DataCollatorMixin):
    """Collate tokenized multi-negative examples into packed (shared-prefix) or naive rows.

    Each example has `prompt_ids` (list[int]), `chosen_ids` (list[int]) and `rejected_ids` (list[list[int]], K may
    differ between examples), optionally `ref_chosen_logps` (float) and `ref_rejected_logps` (list[float]).

    Returns a dict with `input_ids`, `position_ids`, `shift_labels`, `completion_slot` (rows x length),
    `rejected_mask` (B, K_max) bool, and either `segment_ids` (packed: 0 prompt, c + 1 completion block c, -1
    padding; the 4-D mask is built on the device by `block_attention_mask`) or `attention_mask` (naive, 2-D).
    """

    pad_token_id: int
    shared_prefix: bool = True
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        k_max = max(len(ex["rejected_ids"]) for ex in examples)
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
        if self.shared_prefix:
            batch["segment_ids"] = _pad(segments, -1, multiple)
        else:
            batch["attention_mask"] = _pad([[1] * len(r) for r in rows], 0, multiple)
        if "ref_chosen_logps" in examples[0]:
            batch["ref_chosen_logps"] = torch.tensor([ex["ref_chosen_logps"] for ex in examples], dtype=torch.float32)
            batch["ref_rejected_logps"] = torch.tensor(
                [list(ex["ref_rejected_logps"]) + [0.0] * (k_max - len(ex["ref_rejected_logps"])) for ex in examples],
                dtype=torch.float32,
            ).reshape(len(examples), k_max)
        return batch


def block_attention_mask(segment_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, L, L) mask for the packed layout: causal, and a completion block sees the prompt and itself only.

    `sdpa` takes a boolean mask (True = attend); `eager` an additive float mask of `dtype`. Padding positions
    also attend to themselves, so that no softmax row is empty (their outputs are never read).
    """
    length = segment_ids.size(1)
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & ((key == 0) | (key == query)) & (key >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device) & (query < 0)
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def can_pack(model) -> bool:
    """Whether the model's attention kernel takes the custom 4-D mask the packed layout needs."""
    return attention_implementation(model) in PACKABLE_ATTENTION


def ensure_fused_lm_head(model) -> None:
    """Give `model` TRL's fused LM head (log-probs at labelled positions only, no full logits) unless it has one.

    A head that a TRL trainer already added is kept as is, with the outputs that trainer needs (SFTTrainer reads
    the entropy). Without `fused_lm_head=True` the patched forward is the original one, so generation is unchanged.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not has_fused_lm_head(target):
        add_fused_lm_head(target, outputs=("log_probs",))


COMPACT_HEAD_ENV = "TRL_DYNAMICPO_CPU_COMPACT_HEAD"


@contextlib.contextmanager
def compact_lm_head_on_cpu():
    """On CPU, let TRL's fused LM head project only the labelled positions, as it already does on CUDA.

    TRL 1.16 scores every position of a row on devices without Triton (to keep tile shapes fixed for graph
    compilers); with completions of a few tokens after a prompt of a hundred or more, that full-vocabulary projection
    of the prompt positions is most of the CPU time of SFT, DynamicPO and ranking. Projecting only the labelled
    positions gives the same log-probabilities (TRL's own CUDA path). Active inside the `with` block only; other
    devices are not affected; `TRL_DYNAMICPO_CPU_COMPACT_HEAD=0` keeps TRL's behaviour.
    """
    trl_utils = trl_utils_module()
    original = getattr(trl_utils, USE_TRITON_ATTRIBUTE)  # tests/test_compat.py checks that TRL still has it
    disabled = os.environ.get(COMPACT_HEAD_ENV, "1").lower() in ("0", "false", "no")
    if disabled or getattr(original, "_cpu_compact", False):
        yield
        return

    def use_triton_or_cpu(device):
        return True if getattr(device, "type", None) == "cpu" else original(device)

    use_triton_or_cpu._cpu_compact = True
    setattr(trl_utils, USE_TRITON_ATTRIBUTE, use_triton_or_cpu)
    try:
        yield
    finally:
        setattr(trl_utils, USE_TRITON_ATTRIBUTE, original)


def completion_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of every completion in a collated batch, as a (B, K_max + 1) tensor.

    Column 0 is the chosen completion, columns 1.. the negatives (0 at padding). The model must carry TRL's fused
    LM head (`ensure_fused_lm_head`), so only the labelled positions are projected onto the vocabulary.
    """
    inputs = {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "shift_labels": batch["shift_labels"],
        "fused_lm_head": True,
        "use_cache": False,
    }
    if "segment_ids" in batch:
        impl = attention_implementation(model)
        inputs["attention_mask"] = block_attention_mask(batch["segment_ids"], impl, torch.float32)
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    per_token = model(**inputs).log_probs
    slots = batch["completion_slot"]
    per_token = per_token[:, -slots.size(1) :]  # prompt-learning PEFT prepends virtual tokens
    batch_size, k_max = batch["rejected_mask"].shape
    n_slots = batch_size * (k_max + 1)
    # Unlabelled positions go to an extra slot that is dropped, so the shapes never depend on the data.
    index = torch.where(slots >= 0, slots, n_slots).reshape(-1)
    sums = per_token.new_zeros(n_slots + 1).scatter_add(0, index, per_token.reshape(-1))
    return sums[:n_slots].view(batch_size, k_max + 1)
