"""Hugging Face datasets for SFT and multi-negative preference training, built from `RecExample`s.

Both use the text boundary convention of `trl_dynamicpo.recsys.prompts` (standard prompts end with "Answer:",
completions are " " + item name; or chat messages). Row i of the output is built from `examples[i]` with
`builder.build(example, i)`, so the paraphrase and the sampled negatives of a row depend only on the seeds and i.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset
from tqdm.auto import tqdm

from ._rng import SALT_NEGATIVES, stream
from .prompts import PromptBuilder
from .readers import RecExample


def sft_dataset(
    examples: Sequence[RecExample],
    builder: PromptBuilder,
    *,
    history_loss: bool = False,
    tokenizer=None,
    show_progress: bool = False,
) -> Dataset:
    """An SFT dataset for TRL's `SFTTrainer`: the completion is the target.

    Without `history_loss`, a prompt-completion dataset (`prompt`, `completion`): the loss is on the answer only.

    With `history_loss`, a tokenized dataset (`input_ids`, `labels`) whose loss also covers the history items:
    every history item after the first is a label, predicted from the prompt up to it (next-item prediction at every
    history position, as sequential recommenders train), on top of the answer. The instruction words, the separators
    and the candidate list stay unlabelled, so the model never learns to predict a candidate list, and a template
    that lists the candidates before the history is refused. Tokenization is the trainers' (`tokenize_completions`:
    TRL's common-prefix convention, EOS after standard-format answers), so the answer tokens are exactly those
    DynamicPO and the ranking evaluation score. Needs `tokenizer` (a fast tokenizer: labels come from its character
    offsets); works for standard and conversational prompts.

    Example: prompt "History: Muse, Air, Moby.\nCandidates: ... Answer:" and answer " Air" put the loss on the
    tokens of "Air" and "Moby" in the history and on " Air" + EOS.
    """
    prompts = [builder.build(ex, i) for i, ex in enumerate(examples)]
    completions = [builder.completion(ex.target) for ex in examples]
    if not history_loss:
        return Dataset.from_dict({"prompt": prompts, "completion": completions})
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ValueError("sft_dataset(history_loss=True) needs a fast tokenizer (`tokenizer=`): labels use its offsets.")
    from ..preprocessing import tokenize_completions

    rows: dict[str, list] = {"input_ids": [], "labels": []}
    for i, ex in enumerate(tqdm(examples, desc="Labelling history items", disable=not show_progress)):
        prompt_ids, (completion_ids,) = tokenize_completions(tokenizer, prompts[i], [completions[i]], add_eos=True)
        mask = history_label_mask(tokenizer, builder, ex, i, prompts[i], prompt_ids)
        rows["input_ids"].append(prompt_ids + completion_ids)
        rows["labels"].append([t if m else -100 for t, m in zip(prompt_ids, mask)] + completion_ids)
    return Dataset.from_dict(rows)


def history_label_mask(tokenizer, builder: PromptBuilder, example: RecExample, index: int, prompt, prompt_ids) -> list:
    """Which of `prompt_ids` belong to the 2nd..last history item of `example` (see `sft_dataset`).

    A token is labelled when its characters overlap an item's span, so a token that carries the space before a
    name (byte-level BPE) is labelled with it. Raises when the offsets do not describe `prompt_ids` (a tokenizer or
    chat template whose rendering of the prompt cannot be located), rather than labelling the wrong tokens.
    """
    body, spans = builder.text_with_spans(example, index)
    if isinstance(prompt, str):
        text, shift = prompt, 0
        encoded = tokenizer(text, return_offsets_mapping=True)
    else:
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        shift = text.find(body)
        if shift < 0:
            raise ValueError(f"Row {index}: the chat template does not render the prompt text verbatim.")
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    if encoded["input_ids"][: len(prompt_ids)] != list(prompt_ids):
        raise ValueError(f"Row {index}: the tokenizer's offsets do not match the tokenized prompt; cannot label items.")
    labelled = [(a + shift, b + shift) for a, b in spans[1:]]
    return [
        any(start < b and a < end for a, b in labelled) for start, end in encoded["offset_mapping"][: len(prompt_ids)]
    ]


def sample_negatives(
    example: RecExample,
    index: int,
    num_negatives: int | None = None,
    seed: int = 0,
    *,
    scores: Sequence[float] | None = None,
) -> list[str]:
    """The non-target candidates of `example` used as rejected items for row `index`.

    With `num_negatives=None` all of them, in candidate order. Otherwise `num_negatives` distinct ones: with `scores`
    (one per candidate, e.g. a model's log pi(candidate | prompt)) the highest-scoring non-target candidates, best
    first (ties in candidate order): the "hard" negatives a model already ranks near the answer; without, drawn from
    the row's own random stream (seeded by `seed` and `index`), in drawn order.
    """
    negatives = [c for c in example.candidates if c != example.target]
    if num_negatives is None:
        return negatives
    if not 0 < num_negatives <= len(negatives):
        raise ValueError(f"row {index}: num_negatives={num_negatives}, but the row has {len(negatives)} negatives")
    if scores is not None:
        if len(scores) != len(example.candidates):
            raise ValueError(f"row {index}: {len(scores)} scores for {len(example.candidates)} candidates")
        by_name = dict(zip(example.candidates, scores))
        return sorted(negatives, key=lambda c: -by_name[c])[:num_negatives]  # stable: ties keep candidate order
    picks = stream(seed, index, SALT_NEGATIVES).choice(len(negatives), size=num_negatives, replace=False)
    return [negatives[j] for j in picks.tolist()]


def preference_dataset(
    examples: Sequence[RecExample],
    builder: PromptBuilder,
    num_negatives: int | None = None,
    seed: int = 0,
    *,
    scores: Sequence[Sequence[float]] | None = None,
    rejected_items: Sequence[Sequence[str]] | None = None,
) -> Dataset:
    """A multi-negative preference dataset: `prompt`, `chosen` (the target) and `rejected` (a list of K items).

    `rejected` holds `num_negatives` non-target candidates per row (see `sample_negatives`): drawn with a seeded
    stream, or, with `scores` (per row, one score per candidate: `score_candidates` of the SFT model), the K the
    model ranks highest (hard negatives). `num_negatives=None` takes all of them (K = candidates - 1, 19 for the
    LastFM files). `rejected_items` (per row, item names: `generated_negatives`, the model's own wrong answers) gives
    the negatives directly, candidates of the prompt or not; a row with fewer than `num_negatives` of them is topped
    up with its seeded random candidates.
    """
    for name, given in (("score", scores), ("rejected-item", rejected_items)):
        if given is not None and len(given) != len(examples):
            raise ValueError(f"{len(given)} {name} rows for {len(examples)} examples")

    def negatives(ex, i):
        if rejected_items is None:
            return sample_negatives(ex, i, num_negatives, seed, scores=None if scores is None else scores[i])
        own = [n for n in dict.fromkeys(rejected_items[i]) if n != ex.target][:num_negatives]
        if num_negatives is None:
            return own or sample_negatives(ex, i, None, seed)
        if len(own) >= num_negatives:
            return own
        fill = [c for c in sample_negatives(ex, i, None, seed) if c not in own]
        picks = stream(seed, i, SALT_NEGATIVES).permutation(len(fill))[: num_negatives - len(own)]
        return own + [fill[j] for j in picks.tolist()]

    return Dataset.from_dict(
        {
            "prompt": [builder.build(ex, i) for i, ex in enumerate(examples)],
            "chosen": [builder.completion(ex.target) for ex in examples],
            "rejected": [[builder.completion(item) for item in negatives(ex, i)] for i, ex in enumerate(examples)],
        }
    )
