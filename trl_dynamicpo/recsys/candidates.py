"""Leak-free candidate lists, the public (S-DPO) rule, and the candidate-list lookup that measures its leak.

The public LLaRA / S-DPO / DynamicPO files draw each prompt's 19 negatives with Python's generator seeded by the
target's id, so a candidate list is (almost) a function of its target: finding the training prompt with the most
similar candidate list and answering its target solves ~98% of LastFM validation prompts without reading the
history (`leak_check`). `leak_free_candidates` rebuilds the lists from (history, target, catalogue) with a random
stream per prompt that never depends on the target.

Stream of prompt i: `SeedSequence([seed, i, SALT, crc32("::".join(history))])`. The row index and the global
seed make it per prompt; the history key is mixed in so that two files built with the same seed (a training and a
validation file both start at row 0) do not give their i-th prompts the same negatives - which would let a model
spot the target of a validation prompt as the one candidate that differs from training prompt i's list. The
target never enters the seed; it is inserted at a slot drawn from the same stream.

`sdpo_candidates` is the public rule itself, to rebuild the papers' files from LLaRA's raw tables
(`trl-dynamicpo data build --candidates papers`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ._rng import SALT_CANDIDATES, SALT_LEAK_CHECK, stream, text_key
from .readers import RecExample, read_catalogue, read_examples, write_examples


# Candidates per prompt, the target included: the LLaRA / S-DPO / DynamicPO setting, for every dataset.
NUM_CANDIDATES = 20
# How the rejected completions are picked: among a prompt's non-target candidates at random or by a model's scores
# (`sample_negatives`), or as a model's own wrong answers (`generated_negatives`).
NEGATIVE_MODES = ("random", "hard", "generated")


def leak_free_candidates(
    examples: Sequence[RecExample],
    catalogue: Iterable[str],
    num_candidates: int = NUM_CANDIDATES,
    seed: int = 0,
    *,
    show_progress: bool = False,
) -> list[RecExample]:
    """Give every prompt a new candidate list: its target plus distinct negatives drawn from the catalogue.

    Per prompt, `num_candidates - 1` distinct negatives are drawn uniformly from the catalogue without the prompt's
    history items and target, and the target is inserted at a uniformly drawn position, all from the prompt's own
    random stream (see the module docstring). Histories and targets are kept; the input is not modified.

    Args:
        examples: the prompts (their current candidate lists are ignored).
        catalogue: item names to draw negatives from (duplicates are ignored; order matters for reproducibility).
        num_candidates: list length including the target.
        seed: global seed (non-negative).
        show_progress: show a progress bar.

    Raises:
        ValueError: when the catalogue has fewer than `num_candidates - 1` items outside a prompt's history and
            target.
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be at least 1, got {num_candidates}")
    names = list(dict.fromkeys(catalogue))
    position = {name: i for i, name in enumerate(names)}
    num_negatives = num_candidates - 1
    out: list[RecExample] = []
    for index, ex in enumerate(tqdm(examples, desc="Leak-free candidates", disable=not show_progress)):
        excluded = {position[name] for name in (*ex.history, ex.target) if name in position}
        if len(names) - len(excluded) < num_negatives:
            raise ValueError(
                f"row {index}: the catalogue has {len(names) - len(excluded)} items outside the history and target, "
                f"fewer than the {num_negatives} negatives needed"
            )
        rng = stream(seed, index, SALT_CANDIDATES, text_key("::".join(ex.history)))
        # Drawing len(excluded) extra distinct items guarantees enough survivors after removing excluded ones.
        drawn = rng.choice(len(names), size=min(len(names), num_negatives + len(excluded)), replace=False)
        negatives = [names[j] for j in drawn.tolist() if j not in excluded][:num_negatives]
        negatives.insert(int(rng.integers(0, num_candidates)), ex.target)
        out.append(RecExample(history=list(ex.history), candidates=negatives, target=ex.target))
    return out


def sdpo_candidates(
    history: Iterable[Hashable],
    target: Hashable,
    population: Sequence[Hashable],
    num_candidates: int = NUM_CANDIDATES,
    *,
    positions: Mapping[Hashable, int] | None = None,
) -> list:
    """The candidate list S-DPO's data code draws (the rule behind the public lists, which leak the target).

    `random.seed(target); random.sample(the population without the history and the target, num_candidates - 1)`
    plus the target, then `random.seed(target); random.shuffle`, with Python's `random` module, the population in
    catalogue order (LLaRA's item ids in `id2name.txt` order). The sample is drawn over positions, which is what
    `random.sample` does with any sequence, so the list of eligible items is never built. With LLaRA's raw LastFM
    training table this gives the 47,872 public prompts exactly. (S-DPO seeds so for LastFM and Goodreads; its
    Steam and MovieLens code draws unseeded, so no rule reproduces those lists.)

    Args:
        history: the prompt's history items (excluded from the negatives).
        target: the target item; also the seed, so it must be an int, str or bytes (LLaRA's integer ids).
        population: every item, in catalogue order.
        num_candidates: list length, the target included.
        positions: item -> position in `population`, when the caller draws many lists from one population.

    Raises:
        ValueError: when fewer than `num_candidates - 1` items remain outside the history and the target.
    """
    position = positions if positions is not None else {item: i for i, item in enumerate(population)}
    excluded = sorted({position[item] for item in (*history, target) if item in position})
    eligible = len(population) - len(excluded)
    if eligible < num_candidates - 1:
        raise ValueError(f"{eligible} items outside the history and target, fewer than the {num_candidates - 1} needed")
    generator = random.Random(target)
    picks = generator.sample(range(eligible), num_candidates - 1)
    # Position j among the eligible items -> position in the population: skip the excluded ones at or before it.
    chosen = []
    for j in picks:
        for skipped in excluded:
            if skipped > j:
                break
            j += 1
        chosen.append(population[j])
    chosen.append(target)
    random.Random(target).shuffle(chosen)
    return chosen


def catalogue_from_examples(examples: Iterable[RecExample]) -> list[str]:
    """All item names seen in the prompts (histories, candidates, targets), sorted, as a fallback catalogue."""
    seen: set[str] = set()
    for ex in examples:
        seen.update(ex.history)
        seen.update(ex.candidates)
        seen.add(ex.target)
    return sorted(seen)


def make_leak_free_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    catalogue_path: str | os.PathLike | None = None,
    seed: int = 0,
    num_candidates: int = NUM_CANDIDATES,
    *,
    show_progress: bool = True,
) -> Path:
    """Read S-DPO-format prompts from `src`, give them leak-free candidates and write them to `dst`.

    The catalogue is the `items.txt` at `catalogue_path`, or, when None, every item name seen in `src`. Output is
    JSON lines, gzip-compressed when `dst` ends with `.gz`. Returns the path written.
    """
    catalogue = read_catalogue(catalogue_path) if catalogue_path is not None else None
    examples = read_examples(src, catalogue=catalogue)
    if catalogue is None:
        catalogue = catalogue_from_examples(examples)
    rebuilt = leak_free_candidates(examples, catalogue, num_candidates, seed, show_progress=show_progress)
    return write_examples(rebuilt, dst)


def leak_check(
    train_examples: Sequence[RecExample],
    eval_examples: Sequence[RecExample],
    *,
    similarity: str = "jaccard",
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, float]:
    """Candidate-list lookup baseline: how much of the answer the candidate lists alone give away.

    For each evaluation prompt, find the training prompt whose candidate list overlaps most with its own
    (Jaccard similarity, or the raw `"count"` of shared names) and predict that training prompt's target if it is
    among the evaluation candidates, else a random candidate. Among equally similar training prompts the first one
    whose target is among the evaluation candidates is used. Histories are
    never read. Uses an inverted index from item name to training prompts, so the full LastFM files
    (47,872 x 2,767) take a few seconds.

    Returns:
        `{"hit_rate", "chance", "n", "lookup_share", "mean_overlap"}`: the share of prompts answered correctly, the
        expected hit rate of a random guess (mean of 1/len(candidates)), the number of evaluation prompts, the share
        whose looked-up target was among the candidates, and the mean number of names shared with the best match.
        About 0.98 on the public LastFM validation file; near `chance` on leak-free files.
    """
    if similarity not in ("jaccard", "count"):
        raise ValueError(f"similarity must be 'jaccard' or 'count', got {similarity!r}")
    if not eval_examples:
        return {"hit_rate": float("nan"), "chance": float("nan"), "n": 0, "lookup_share": float("nan"),
                "mean_overlap": float("nan")}  # fmt: skip
    vocab: dict[str, int] = {}
    item_ids = np.fromiter(
        (vocab.setdefault(name, len(vocab)) for ex in train_examples for name in ex.candidates), dtype=np.int64
    )
    lengths = np.fromiter((len(ex.candidates) for ex in train_examples), dtype=np.int64, count=len(train_examples))
    rows = np.repeat(np.arange(len(train_examples)), lengths)
    # Inverted index: postings[v] = training rows whose candidate list contains item v.
    order = np.argsort(item_ids, kind="stable")
    bounds = np.searchsorted(item_ids[order], np.arange(len(vocab) + 1))
    sorted_rows = rows[order]
    train_len = lengths.astype(np.float64)
    train_targets = np.fromiter((vocab.get(ex.target, -1) for ex in train_examples), dtype=np.int64)

    hits = looked_up = 0
    overlap_sum = 0.0
    chance = 0.0
    for index, ex in enumerate(tqdm(eval_examples, desc="Leak check", disable=not show_progress)):
        chance += 1.0 / len(ex.candidates)
        ids = [vocab[name] for name in ex.candidates if name in vocab]
        prediction = None
        if ids and len(train_examples):
            postings = np.concatenate([sorted_rows[bounds[v] : bounds[v + 1]] for v in ids])
            counts = np.bincount(postings, minlength=len(train_examples))
            sim = counts / (train_len + len(ex.candidates) - counts) if similarity == "jaccard" else counts
            best = np.flatnonzero(sim == sim.max())
            overlap_sum += float(counts[best[0]])
            # Among equally similar training prompts, the first whose target is among the evaluation candidates.
            usable = best[np.isin(train_targets[best], ids)] if counts[best[0]] > 0 else best[:0]
            if len(usable):
                prediction = train_examples[int(usable[0])].target
                looked_up += 1
        if prediction is None:
            rng = stream(seed, index, SALT_LEAK_CHECK)
            prediction = ex.candidates[int(rng.integers(0, len(ex.candidates)))]
        hits += prediction == ex.target
    n = len(eval_examples)
    return {
        "hit_rate": hits / n,
        "chance": chance / n,
        "n": n,
        "lookup_share": looked_up / n,
        "mean_overlap": overlap_sum / n,
    }
