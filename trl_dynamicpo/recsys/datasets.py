"""Hugging Face datasets for SFT and multi-negative preference training, built from `RecExample`s.

Both use the text boundary convention of `trl_dynamicpo.recsys.prompts` (standard prompts end with "Answer:",
completions are " " + item name; or chat messages). Row i of the output is built from `examples[i]` with
`builder.build(example, i)`, so the paraphrase and the sampled negatives of a row depend only on the seeds and i.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset

from ._rng import SALT_NEGATIVES, stream
from .prompts import PromptBuilder
from .readers import RecExample


def sft_dataset(examples: Sequence[RecExample], builder: PromptBuilder) -> Dataset:
    """A prompt-completion dataset (`prompt`, `completion`) for TRL's `SFTTrainer`: the completion is the target."""
    return Dataset.from_dict(
        {
            "prompt": [builder.build(ex, i) for i, ex in enumerate(examples)],
            "completion": [builder.completion(ex.target) for ex in examples],
        }
    )


def sample_negatives(example: RecExample, index: int, num_negatives: int | None = None, seed: int = 0) -> list[str]:
    """The non-target candidates of `example` used as rejected items for row `index`.

    With `num_negatives=None` all of them, in candidate order; otherwise `num_negatives` distinct ones drawn from
    the row's own random stream (seeded by `seed` and `index`), in drawn order.
    """
    negatives = [c for c in example.candidates if c != example.target]
    if num_negatives is None:
        return negatives
    if not 0 < num_negatives <= len(negatives):
        raise ValueError(f"row {index}: num_negatives={num_negatives}, but the row has {len(negatives)} negatives")
    picks = stream(seed, index, SALT_NEGATIVES).choice(len(negatives), size=num_negatives, replace=False)
    return [negatives[j] for j in picks.tolist()]


def preference_dataset(
    examples: Sequence[RecExample], builder: PromptBuilder, num_negatives: int | None = None, seed: int = 0
) -> Dataset:
    """A multi-negative preference dataset: `prompt`, `chosen` (the target) and `rejected` (a list of K items).

    `rejected` holds `num_negatives` non-target candidates drawn per row with a seeded stream (see
    `sample_negatives`), or all of them when None (K = number of candidates - 1, 19 for the LastFM files).
    """
    return Dataset.from_dict(
        {
            "prompt": [builder.build(ex, i) for i, ex in enumerate(examples)],
            "chosen": [builder.completion(ex.target) for ex in examples],
            "rejected": [
                [builder.completion(item) for item in sample_negatives(ex, i, num_negatives, seed)]
                for i, ex in enumerate(examples)
            ],
        }
    )
