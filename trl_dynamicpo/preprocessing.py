"""Validation and tokenization of multi-negative preference datasets.

A row holds `prompt`, `chosen` and `rejected`, where `rejected` is a list of K >= 1 completions or a single
completion (K = 1, TRL's pairwise format), and optionally `tools` (a list of JSON schemas, or its JSON string) and
`chat_template_kwargs`, as in TRL. Standard (text) and conversational (message list) formats are both accepted;
which one a row uses is decided from its prompt alone. Tokenization follows TRL's convention: each completion starts
where the tokenized prompt and the tokenized prompt+completion diverge, EOS is appended to standard-format
completions, and the tools are rendered into the chat template.

Rows are numbered by their index in the dataset passed in, from 0 ("Row 3" is `dataset[3]`). A row is invalid only
where it is certainly a data bug (a missing or ill-typed field, a negative identical to the chosen answer, a prompt
or completion that tokenizes to no token); whether that stops the run or drops the row is `drop_invalid_rows`, and
what a repeated negative does is `duplicate_negatives` (see `DynamicPOConfig`). Everything TRL trains on that renders
to real tokens is trained on: an empty completion (it still gets EOS), a blank prompt that tokenizes to something, a
tool-call answer with `content=""`.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.utils import logging
from trl import extract_prompt

from .compat import _tokenize, common_prefix_length, global_then_local_main_first


logger = logging.get_logger(__name__)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")
TOKENIZED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
IMAGE_COLUMNS = ("image", "images")
_BOOKKEEPING = ("_invalid", "_removed", "_truncated")
_MAX_LISTED_ROWS = 50


def _tokenized_features():
    from datasets import List, Value

    ids = List(Value("int64"))
    return {
        "prompt_ids": ids, "chosen_ids": ids, "rejected_ids": List(ids),
        "_invalid": Value("string"), "_removed": Value("int64"), "_truncated": Value("bool"),
    }  # fmt: skip


class InvalidRowError(ValueError):
    """A row that is certainly a data bug; the message names the row and the field."""


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(isinstance(m, dict) and "role" in m for m in value)


def is_conversational_prompt(prompt: Any) -> bool:
    """True for a message-list prompt. Decided from the prompt alone (TRL's `is_conversational` picks an arbitrary
    key, which is ambiguous when `rejected` is a list of conversations)."""
    return _is_messages(prompt)


def text_tokenizer(processing_class) -> PreTrainedTokenizerBase:
    """The tokenizer of a processing class: itself, or a multimodal processor's `tokenizer`."""
    return processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class


def check_text_only(example: dict[str, Any], dataset_name: str) -> None:
    """Refuse image data: DynamicPOTrainer scores text completions only (TRL trains VLMs on pairwise data)."""
    found = [c for c in IMAGE_COLUMNS if c in example]
    if found:
        raise ValueError(
            f"The {dataset_name} dataset has image data (column {found[0]!r}), which DynamicPOTrainer does not "
            "support: it scores text completions only (a vision-language model's processor works on text-only data). "
            "Remove the image column, or train on pairwise image data with trl.DPOTrainer."
        )


def normalize_rejected(rejected: Any, conversational: bool, row: int) -> list:
    """Return `rejected` as a list of completions, validating its shape. `row` is used in error messages."""
    if conversational:
        if _is_messages(rejected):
            return [rejected]
        if isinstance(rejected, list) and all(_is_messages(r) for r in rejected):
            if not rejected:
                raise InvalidRowError(f"Row {row}: field 'rejected' is an empty list; give at least one negative.")
            return list(rejected)
    else:
        if isinstance(rejected, str):
            return [rejected]
        if isinstance(rejected, list) and all(isinstance(r, str) for r in rejected):
            if not rejected:
                raise InvalidRowError(f"Row {row}: field 'rejected' is an empty list; give at least one negative.")
            return list(rejected)
    expected = "a message list or a list of message lists" if conversational else "a string or a list of strings"
    raise InvalidRowError(
        f"Row {row}: field 'rejected' must be {expected} (the prompt is "
        f"{'conversational' if conversational else 'standard text'}), got {type(rejected).__name__}: "
        f"{str(rejected)[:120]!r}."
    )


def validate_example(example: dict[str, Any], row: int) -> list:
    """Check the fields and types of one raw row; return its negatives as a list.

    Raises `InvalidRowError` (a `ValueError`) naming the row and the field.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in example or example[c] is None]
    if missing:
        raise InvalidRowError(f"Row {row}: missing field(s) {missing}; a row needs 'prompt', 'chosen' and 'rejected'.")
    conversational = is_conversational_prompt(example["prompt"])
    if not conversational and not isinstance(example["prompt"], str):
        raise InvalidRowError(
            f"Row {row}: field 'prompt' must be a string or a list of messages, got {type(example['prompt']).__name__}."
        )
    chosen = example["chosen"]
    if conversational != _is_messages(chosen):
        raise InvalidRowError(
            f"Row {row}: field 'chosen' must be {'a message list' if conversational else 'a string'} like the prompt, "
            f"got {type(chosen).__name__}."
        )
    return normalize_rejected(example["rejected"], conversational, row)


def _squeeze_whitespace(value: Any) -> Any:
    return "".join(value.split()) if isinstance(value, str) else value


def _repeat_key(completion: Any) -> str:
    """What two completions share when they differ at most by whitespace (text, or every message's content)."""
    if isinstance(completion, str):
        return _squeeze_whitespace(completion)
    messages = [{k: _squeeze_whitespace(v) if k == "content" else v for k, v in m.items()} for m in completion]
    return json.dumps(messages, sort_keys=True, default=str)


def remove_repeats(chosen: Any, rejected: list, row: int, mode: str) -> tuple[list, list[int]]:
    """Negatives that repeat the chosen answer or an earlier negative, exactly or up to whitespace.

    With `mode="error"` the first repeat raises `InvalidRowError`; with `"remove"` the repeats are left out.

    Returns:
        The negatives kept and their indices in `rejected` (so that later messages name the original field).
    """
    seen = {_repeat_key(chosen): "chosen"}
    kept, kept_index = [], []
    for j, negative in enumerate(rejected):
        key = _repeat_key(negative)
        if key not in seen:
            seen[key] = f"rejected[{j}]"
            kept.append(negative)
            kept_index.append(j)
            continue
        if mode == "remove":
            continue
        other = seen[key]
        original = chosen if other == "chosen" else rejected[int(other[9:-1])]
        if negative == original:
            what = f"is identical to {other!r} ({str(negative)[:80]!r})"
        else:
            what = f"differs from {other!r} only by whitespace ({str(negative)[:80]!r} vs {str(original)[:80]!r})"
        purpose = "a negative must differ from the chosen answer" if other == "chosen" else "it would count twice"
        raise InvalidRowError(
            f"Row {row}: field 'rejected[{j}]' {what}; {purpose}. Set duplicate_negatives='remove' to drop repeated "
            "negatives, or drop_invalid_rows=True to drop such rows."
        )
    if not kept:
        raise InvalidRowError(
            f"Row {row}: every negative in field 'rejected' repeats 'chosen' (up to whitespace); no negative is left."
        )
    return kept, kept_index


def tokenize_completions(
    processing_class,
    prompt: Any,
    completions: list,
    *,
    add_eos: bool,
    chat_template_kwargs: dict | None = None,
    tools: list | None = None,
) -> tuple[list[int], list[list[int]]]:
    """Tokenize a prompt and its completions with TRL's common-prefix convention.

    Conversational rows go through the chat template (of the processor itself, as TRL does, with `tools` and
    `chat_template_kwargs`); standard text goes through the text tokenizer, with EOS appended when `add_eos`.

    Returns the shared prompt ids and one id list per completion. The prompt ends where the tokenized prompt and
    *every* tokenized prompt+completion still agree, so all completions share exactly the same prefix.
    """
    if is_conversational_prompt(prompt):
        kwargs = {"tools": tools, **(chat_template_kwargs or {})}
        prompt_ids = _tokenize(processing_class, prompt, add_generation_prompt=True, **kwargs)["input_ids"]
        full = [_tokenize(processing_class, prompt + c, **kwargs)["input_ids"] for c in completions]
    else:
        tokenizer = text_tokenizer(processing_class)
        eos = tokenizer.eos_token if add_eos else ""
        texts = [c if (not eos or c.endswith(eos)) else c + eos for c in completions]
        prompt_ids, *full = tokenizer([prompt] + [prompt + c for c in texts])["input_ids"]  # one batched call
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in full)
    if prompt_len < len(prompt_ids):
        logger.warning_once(  # TRL's warning, word for word
            "The tokenized prompt is not a prefix of the tokenized prompt+completion, usually because the chat "
            "template renders the prompt alone differently or because tokens merge across the boundary. The "
            "completion starts where they diverge, and this end of the prompt is left out of the training sequence: "
            f"{text_tokenizer(processing_class).decode(prompt_ids[prompt_len:])!r}. The model is trained on a context "
            "that differs from the one it sees at inference. To avoid it, use a chat template that renders the prompt "
            "the same way in both cases, or end the prompt on a token boundary. This warning is shown once, but it "
            "likely applies to every example in the dataset."
        )
    return list(prompt_ids[:prompt_len]), [list(ids[prompt_len:]) for ids in full]


def truncate_example(
    prompt_ids: list[int], completions: list[list[int]], max_length: int | None, mode: str
) -> tuple[list[int], list[list[int]], bool]:
    """Apply `max_length` to every prompt+completion of one example alike (see `DynamicPOConfig`).

    `keep_start` keeps the prompt and cuts the completions' ends; `keep_end` cuts the prompt's start so that the
    longest completion fits, keeping at least the prompt's last token, and a completion still too long keeps its end
    (TRL's `keep_end` keeps the last `max_length` tokens of each sequence).

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
        room = max(max_length - keep, 0)
        return prompt_ids[-keep:], [c[max(len(c) - room, 0) :] for c in completions], True
    if mode == "keep_start":
        room = max(max_length - len(prompt_ids), 0)
        return prompt_ids, [c[:room] for c in completions], True
    raise ValueError(f"Unsupported truncation mode: {mode}, expected 'keep_start' or 'keep_end'")


def tokenize_row(
    example: dict[str, Any],
    index: int,
    *,
    processing_class,
    max_length: int | None,
    truncation_mode: str,
    duplicate_negatives: str,
    drop_invalid_rows: bool,
) -> dict[str, Any]:
    """Validate and tokenize one raw row (the `datasets.map` function of `prepare_preference_dataset`).

    Adds `prompt_ids`, `chosen_ids`, `rejected_ids` and the bookkeeping columns `_invalid` (why the row is dropped,
    or ""), `_removed` (repeated negatives left out) and `_truncated`.
    """
    try:
        negatives = validate_example(example, index)
        rejected, kept_index = remove_repeats(example["chosen"], negatives, index, duplicate_negatives)
        tools = example.get("tools")
        tools = json.loads(tools) if isinstance(tools, str) else tools
        prompt_ids, ids = tokenize_completions(
            processing_class,
            example["prompt"],
            [example["chosen"], *rejected],
            add_eos=text_tokenizer(processing_class).eos_token is not None,
            chat_template_kwargs=example.get("chat_template_kwargs"),
            tools=tools,
        )
        if not prompt_ids:
            raise InvalidRowError(
                f"Row {index}: field 'prompt' tokenizes to no tokens, so the first completion token has nothing to "
                "be predicted from."
            )
        fields = ["chosen"] + [f"rejected[{j}]" for j in kept_index]
        for name, completion in zip(fields, ids):
            if not completion:
                raise InvalidRowError(f"Row {index}: field {name!r} tokenizes to no tokens (nothing to score).")
    except InvalidRowError as error:
        if not drop_invalid_rows:
            raise
        return {
            "prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "_invalid": str(error), "_removed": 0,
            "_truncated": False,
        }  # fmt: skip
    prompt_ids, ids, truncated = truncate_example(prompt_ids, ids, max_length, truncation_mode)
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": ids[0],
        "rejected_ids": ids[1:],
        "_invalid": "",
        "_removed": len(negatives) - len(rejected),
        "_truncated": truncated,
    }


def _row_list(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:_MAX_LISTED_ROWS]))
    return f"[{shown}{', ...' if len(rows) > _MAX_LISTED_ROWS else ''}]"


def prepare_preference_dataset(dataset, processing_class, args, dataset_name: str = "train"):
    """Validate and tokenize a multi-negative preference dataset for `DynamicPOTrainer`.

    Adds `prompt_ids`, `chosen_ids` and `rejected_ids` (a list of K id lists). Idempotent: a dataset that already
    has these columns is returned as is. Invalid rows raise a `ValueError` naming the row and the field before any
    training starts, or with `drop_invalid_rows` are dropped and logged with their row numbers; repeated negatives
    are handled as `duplicate_negatives` says; rows whose prompt alone fills `max_length` are dropped and counted.
    Runs on the main process first under Accelerate, as TRL's preparation does, so the others read its cache.
    """
    from datasets import Dataset, Features

    first = next(iter(dataset))
    check_text_only(first, dataset_name)
    columns = dataset.column_names or list(first.keys())
    if all(c in columns for c in TOKENIZED_COLUMNS):
        return dataset
    is_map_style = isinstance(dataset, Dataset)
    map_kwargs = {"num_proc": args.dataset_num_proc} if is_map_style else {}

    with global_then_local_main_first():
        if "prompt" not in columns:
            if "chosen" in first and "rejected" in first and (
                isinstance(first["rejected"], str) or _is_messages(first["rejected"])
            ):
                # TRL's implicit-prompt format (pairwise only): the prompt is the common start of chosen and rejected.
                dataset = dataset.map(extract_prompt, **map_kwargs)
            else:
                raise ValueError(
                    f"The {dataset_name} dataset has no 'prompt' column (columns: {columns}); multi-negative rows "
                    "need an explicit prompt."
                )
        if is_map_style:
            map_kwargs["desc"] = f"Validating and tokenizing {dataset_name} dataset"
        options = {
            "processing_class": processing_class,
            "max_length": args.max_length,
            "truncation_mode": args.truncation_mode,
            "duplicate_negatives": args.duplicate_negatives,
            "drop_invalid_rows": args.drop_invalid_rows,
        }
        if dataset.features is not None:  # explicit types: a batch of dropped rows holds only empty lists
            map_kwargs["features"] = Features({**dataset.features, **_tokenized_features()})
        dataset = dataset.map(tokenize_row, with_indices=True, fn_kwargs=options, **map_kwargs)
        if is_map_style:
            dataset = _drop_and_count(dataset, args, dataset_name)
        else:
            kwargs = {"args": args, "dataset_name": dataset_name}
            dataset = dataset.filter(_keep_streamed_row, with_indices=True, fn_kwargs=kwargs)
    return dataset.remove_columns(list(_BOOKKEEPING))


def max_negatives(dataset) -> int | None:
    """The largest K (number of negatives of a row) of a prepared map-style dataset; None for a streamed one.

    Read from the Arrow column (list lengths), so the token ids are never turned into Python lists.
    """
    from datasets import Dataset

    if not isinstance(dataset, Dataset) or "rejected_ids" not in dataset.column_names:
        return None
    import pyarrow.compute as pc

    largest = pc.max(pc.list_value_length(dataset.with_format("arrow")["rejected_ids"])).as_py()
    return int(largest or 0)


def _drop_and_count(dataset, args, dataset_name: str):
    """Log what preparation removed or cut in a map-style dataset, and drop the rows that cannot be trained on."""
    total = len(dataset)
    invalid = [i for i, reason in enumerate(dataset["_invalid"]) if reason]
    if invalid:
        if len(invalid) == total:
            raise ValueError(
                f"Every row of the {dataset_name} dataset is invalid; the first: {dataset[invalid[0]]['_invalid']}"
            )
        logger.warning(
            f"Dropped {len(invalid)} of {total} {dataset_name} rows that are data bugs (drop_invalid_rows=True): "
            f"rows {_row_list(invalid)}. First: {dataset[invalid[0]]['_invalid']}"
        )
    removed = dataset["_removed"]
    with_repeats = [i for i, n in enumerate(removed) if n]
    if with_repeats:
        logger.warning(
            f"Removed {sum(removed)} repeated negatives from {len(with_repeats)} of {total} {dataset_name} rows "
            f"(duplicate_negatives='remove'): rows {_row_list(with_repeats)}."
        )
    n_truncated = sum(dataset["_truncated"])
    if n_truncated:
        logger.warning(
            f"{n_truncated} of {total} {dataset_name} examples exceed max_length={args.max_length}; their "
            f"sequences were cut with truncation_mode={args.truncation_mode!r} (all completions alike)."
        )
    keep = [not reason for reason in dataset["_invalid"]]
    if args.max_length is not None and args.truncation_mode == "keep_start":
        too_long = [ok and len(p) >= args.max_length for ok, p in zip(keep, dataset["prompt_ids"])]
        if any(too_long):
            logger.warning(
                f"Dropped {sum(too_long)} of {total} {dataset_name} examples whose prompt alone reaches "
                f"max_length={args.max_length} (no completion token would be left)."
            )
            keep = [ok and not long for ok, long in zip(keep, too_long)]
    if all(keep):
        return dataset
    return dataset.select([i for i, ok in enumerate(keep) if ok])


def _keep_streamed_row(example, index: int, args, dataset_name: str) -> bool:
    """Streaming counterpart of `_drop_and_count`: rows are logged one by one as they are read."""
    if example["_invalid"]:
        logger.warning(f"Dropped a {dataset_name} row that is a data bug (drop_invalid_rows=True): {example['_invalid']}")
        return False
    if example["_removed"]:
        logger.warning(
            f"Removed {example['_removed']} repeated negatives from {dataset_name} row {index} "
            "(duplicate_negatives='remove')."
        )
    if args.max_length is not None and args.truncation_mode == "keep_start":
        return len(example["prompt_ids"]) < args.max_length
    return True
