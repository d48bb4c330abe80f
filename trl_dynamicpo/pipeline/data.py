"""From `RecDataArguments` to examples, prompt builders and TRL datasets."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .arguments import RecDataArguments


logger = logging.getLogger(__name__)


@dataclass
class RecData:
    """The examples of one run (candidate lists already rebuilt when leak-free) and the catalogue used."""

    train: list | None
    eval: list | None
    test: list | None
    catalogue: list[str] | None
    name: str


def _subsample(examples: list, count: int | None, seed: int) -> list:
    """A seeded random subset of `count` examples, in file order (`None` or a larger count keeps all)."""
    if count is None or count >= len(examples):
        return examples
    if count < 1:
        raise ValueError(f"max_train_samples must be positive; got {count}.")
    import numpy as np

    rng = np.random.default_rng([seed, 0x5B5E7])  # its own stream: independent of the candidate draws
    picks = sorted(rng.choice(len(examples), size=count, replace=False).tolist())
    return [examples[i] for i in picks]


def load_rec_data(args: RecDataArguments, need: tuple[str, ...] = ("train", "eval", "test")) -> RecData:
    """Read the files named by `args` (or the bundled sample), with leak-free candidates unless `candidates: file`.

    Candidate lists are rebuilt on the full file before any subsampling, so a prompt gets the same list whatever
    `max_*_samples` is, and `sft`, `train` and `eval` see the same lists. The catalogue is `items_file`, else the
    sample's, else every item seen in the files read.
    """
    from trl_dynamicpo.recsys import catalogue_from_examples, leak_free_candidates, read_catalogue, read_examples

    leak_free = args.candidates == "leak_free"
    if args.uses_sample:
        from trl_dynamicpo.recsys import sample_path

        files = {"train": str(sample_path("train")), "eval": str(sample_path("val")), "test": None}
        items_file = args.items_file or str(sample_path("items"))
        name = args.dataset_name or "lastfm-sample"
    else:
        files = {"train": args.train_file, "eval": args.eval_file, "test": args.test_file}
        items_file = args.items_file
        name = args.dataset_name or "recsys"

    catalogue = read_catalogue(items_file) if items_file else None
    wanted = {split for split in need if files.get(split)}
    if "test" in need and not files.get("test") and files.get("eval"):
        wanted.add("eval")  # `eval` falls back to the validation file
    raw = {
        split: read_examples(files[split], catalogue=catalogue, drop_invalid_rows=args.drop_invalid_rows)
        for split in ("train", "eval", "test")
        if split in wanted
    }
    if leak_free and catalogue is None:
        # Read every file given, so the fallback catalogue does not depend on which command runs.
        for split in ("train", "eval", "test"):
            if files.get(split) and split not in raw:
                raw[split] = read_examples(files[split], drop_invalid_rows=args.drop_invalid_rows)
        catalogue = catalogue_from_examples([ex for examples in raw.values() for ex in examples])
        logger.warning(
            "No items_file given: leak-free candidates are drawn from the %d items seen in the data files. Pass the "
            "catalogue (items_file) so that every command and every split draws from the same items.",
            len(catalogue),
        )
    out = {}
    for split, examples in raw.items():
        if split not in wanted:
            continue
        if leak_free:
            examples = leak_free_candidates(examples, catalogue, num_candidates=args.num_candidates, seed=args.candidate_seed)
        limit = args.max_train_samples if split == "train" else args.max_eval_samples
        if split == "train":
            examples = _subsample(examples, limit, args.candidate_seed)
        elif limit is not None:
            examples = examples[:limit]
        out[split] = examples
    return RecData(train=out.get("train"), eval=out.get("eval"), test=out.get("test"), catalogue=catalogue, name=name)


def prompt_builder(args: RecDataArguments):
    from trl_dynamicpo.recsys import PromptBuilder

    return PromptBuilder(
        domain=args.domain,
        template=args.template,
        seed=args.candidate_seed,
        conversational=args.conversational,
        separator=args.separator,
    )


def check_negatives(examples: list, num_negatives: int | None, split: str) -> None:
    if num_negatives is None:
        return
    fewest = min((len(ex.candidates) - 1 for ex in examples), default=num_negatives)
    if fewest < num_negatives:
        raise ValueError(
            f"num_negatives={num_negatives} but some {split} prompts have only {fewest} non-target candidates; "
            "lower num_negatives or use -1 for all of them."
        )
