"""Validation and tokenization of multi-negative preference datasets.

A row holds `prompt`, `chosen` and `rejected`, where `rejected` is a list of K >= 1 completions or a single
completion (K = 1, TRL's pairwise format). Standard (text) and conversational (message list) formats are both
accepted; which one a row uses is decided from its prompt alone. Tokenization follows TRL's convention: each
completion starts where the tokenized prompt and the tokenized prompt+completion diverge, and EOS is appended to
standard-format completions.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .compat import _tokenize, common_prefix_length, extract_prompt


logger = logging.get_logger(__name__)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) and "role" in m for m in value)


def is_conversational_prompt(prompt: Any) -> bool:
    """True for a message-list prompt. Decided from the prompt alone (TRL's `is_conversational` picks an arbitrary
    key, which is ambiguous when `rejected` is a list of conversations)."""
    return _is_messages(prompt)


def normalize_rejected(rejected: Any, conversational: bool, row: int) -> list:
    """Return `rejected` as a list of completions, validating its shape. `row` is used in error messages."""
    if conversational:
        if _is_messages(rejected):
            return [rejected]
        if isinstance(rejected, list) and all(_is_messages(r) for r in rejected):
            if not rejected:
                raise ValueError(f"Row {row}: field 'rejected' is an empty list; give at least one negative.")
            return list(rejected)
    else:
        if isinstance(rejected, str):
            return [rejected]
        if isinstance(rejected, list) and all(isinstance(r, str) for r in rejected):
            if not rejected:
                raise ValueError(f"Row {row}: field 'rejected' is an empty list; give at least one negative.")
            return list(rejected)
    expected = "a message list or a list of message lists" if conversational else "a string or a list of strings"
    raise ValueError(
        f"Row {row}: field 'rejected' must be {expected} (the prompt is "
        f"{'conversational' if conversational else 'standard text'}), got {type(rejected).__name__}: "
        f"{str(rejected)[:120]!r}."
    )


def _completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)


def validate_example(example: dict[str, Any], row: int) -> list:
    """Check one raw row; return its negatives as a list. Raises `ValueError` naming the row and the field."""
    missing = [c for c in REQUIRED_COLUMNS if c not in example or example[c] is None]
    if missing:
        raise ValueError(f"Row {row}: missing field(s) {missing}; a row needs 'prompt', 'chosen' and 'rejected'.")
    conversational = is_conversational_prompt(example["prompt"])
    if not conversational and not isinstance(example["prompt"], str):
        raise ValueError(
            f"Row {row}: field 'prompt' must be a string or a list of messages, got {type(example['prompt']).__name__}."
        )
    if not conversational and not example["prompt"].strip():
        raise ValueError(f"Row {row}: field 'prompt' is empty.")
    chosen = example["chosen"]
    if conversational != _is_messages(chosen):
        raise ValueError(
            f"Row {row}: field 'chosen' must be {'a message list' if conversational else 'a string'} like the prompt, "
            f"got {type(chosen).__name__}."
        )
    if not _completion_text(chosen).strip():
        raise ValueError(f"Row {row}: field 'chosen' is an empty completion.")
    rejected = normalize_rejected(example["rejected"], conversational, row)
    for j, negative in enumerate(rejected):
        if not _completion_text(negative).strip():
            raise ValueError(f"Row {row}: field 'rejected[{j}]' is an empty completion.")
        if negative == chosen:
            raise ValueError(
                f"Row {row}: field 'rejected[{j}]' is identical to 'chosen' ({_completion_text(chosen)[:80]!r}); "
                "a negative must differ from the chosen answer."
            )
    return rejected


def tokenize_completions(
    processing_class, prompt: Any, completions: list, *, add_eos: bool, chat_template_kwargs: dict | None = None
) -> tuple[list[int], list[list[int]]]:
    """Tokenize a prompt and its completions with TRL's common-prefix convention.

    Returns the shared prompt ids and one id list per completion. The prompt ends where the tokenized prompt and
    *every* tokenized prompt+completion still agree, so all completions share exactly the same prefix.
    """
    kwargs = dict(chat_template_kwargs or {})
    if is_conversational_prompt(prompt):
        prompt_ids = _tokenize(processing_class, prompt, add_generation_prompt=True, **kwargs)["input_ids"]
        full = [_tokenize(processing_class, prompt + c, **kwargs)["input_ids"] for c in completions]
    else:
        eos = processing_class.eos_token if add_eos else ""
        texts = [c if (not eos or c.endswith(eos)) else c + eos for c in completions]
        if isinstance(processing_class, PreTrainedTokenizerBase):  # one batched call for the K + 2 texts
            prompt_ids, *full = processing_class([prompt] + [prompt + c for c in texts])["input_ids"]
        else:
            prompt_ids = _tokenize(processing_class, prompt)["input_ids"]
            full = [_tokenize(processing_class, prompt + c)["input_ids"] for c in texts]
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full)
    if prompt_len < len(prompt_ids):
        logger.warning_once(
            "The tokenized prompt is not a prefix of the tokenized prompt+completion (tokens merge across the "
            "boundary or the chat template renders the prompt differently); completions start where they diverge."
        )
    return list(prompt_ids[:prompt_len]), [list(ids[prompt_len:]) for ids in full]


def truncate_example(
    prompt_ids: list[int], completions: list[list[int]], max_length: int | None, mode: str
) -> tuple[list[int], list[list[int]], bool]:
    """Apply `max_length` to every prompt+completion of one example alike (see `DynamicPOConfig`).

    Returns the new prompt ids, completions and whether anything was cut. The caller drops examples whose prompt
    alone reaches `max_length` under `keep_start`.
    """
    if max_length is None:
        return prompt_ids, completions, False
    longest = max(len(c) for c in completions)
    if len(prompt_ids) + longest <= max_length:
        return prompt_ids, completions, False
    if mode == "keep_end":
        keep = max(max_length - longest, 1)
        return prompt_ids[-keep:], [c[: max_length - keep] for c in completions], True
    if mode == "keep_start":
        room = max_length - len(prompt_ids)
        return prompt_ids, [c[: max(room, 0)] for c in completions], True
    raise ValueError(f"Unsupported truncation_mode {mode!r}; expected 'keep_start' or 'keep_end'.")


def prepare_preference_dataset(dataset, processing_class, args, dataset_name: str = "train"):
    """Validate and tokenize a multi-negative preference dataset for `DynamicPOTrainer`.

    Adds `prompt_ids`, `chosen_ids` and `rejected_ids` (a list of K id lists). Idempotent: a dataset that already
    has these columns is returned as is. Bad rows raise a `ValueError` naming the row and the field before any
    training starts; rows whose prompt alone fills `max_length` are dropped and the count is logged.
    """
    from datasets import Dataset

    columns = dataset.column_names or list(next(iter(dataset)).keys())
    if all(c in columns for c in TOKENIZED_COLUMNS):
        return dataset
    is_map_style = isinstance(dataset, Dataset)
    map_kwargs = {"num_proc": args.dataset_num_proc} if is_map_style else {}

    if "prompt" not in columns:
        first = next(iter(dataset))
        if "chosen" in first and "rejected" in first and isinstance(first["rejected"], (str, list)) and (
            isinstance(first["rejected"], str) or _is_messages(first["rejected"])
        ):
            # TRL's implicit-prompt format (pairwise only): the prompt is the common start of chosen and rejected.
            dataset = dataset.map(extract_prompt, **map_kwargs)
        else:
            raise ValueError(
                f"The {dataset_name} dataset has no 'prompt' column (columns: {columns}); multi-negative rows need "
                "an explicit prompt."
            )

    eos_token = getattr(processing_class, "eos_token", None) or processing_class.tokenizer.eos_token

    def tokenize_row(example, index):
        rejected = validate_example(example, index)
        prompt_ids, ids = tokenize_completions(
            processing_class,
            example["prompt"],
            [example["chosen"], *rejected],
            add_eos=eos_token is not None,
            chat_template_kwargs=example.get("chat_template_kwargs"),
        )
        prompt_ids, ids, truncated = truncate_example(prompt_ids, ids, args.max_length, args.truncation_mode)
        if not prompt_ids:
            raise ValueError(f"Row {index}: field 'prompt' tokenizes to no tokens.")
        return {"prompt_ids": prompt_ids, "chosen_ids": ids[0], "rejected_ids": ids[1:], "_truncated": truncated}

    if is_map_style:
        map_kwargs["desc"] = f"Validating and tokenizing {dataset_name} dataset"
    dataset = dataset.map(tokenize_row, with_indices=True, **map_kwargs)

    if is_map_style:
        n_truncated = sum(dataset["_truncated"])
        if n_truncated:
            logger.warning(
                f"{n_truncated} of {len(dataset)} {dataset_name} examples exceed max_length={args.max_length}; their "
                f"sequences were cut with truncation_mode={args.truncation_mode!r} (all completions alike)."
            )
        if args.max_length is not None and args.truncation_mode == "keep_start":
            keep = [len(p) < args.max_length for p in dataset["prompt_ids"]]
            n_dropped = keep.count(False)
            if n_dropped:
                logger.warning(
                    f"Dropped {n_dropped} of {len(dataset)} {dataset_name} examples whose prompt alone reaches "
                    f"max_length={args.max_length} (no completion token would be left)."
                )
                dataset = dataset.select([i for i, k in enumerate(keep) if k])
    elif args.max_length is not None and args.truncation_mode == "keep_start":
        dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
    return dataset.remove_columns("_truncated")
