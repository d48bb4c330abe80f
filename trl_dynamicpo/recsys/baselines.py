"""Non-LLM reference points for the ranking protocol: random, popularity and item-to-item transitions.

Each baseline returns one score list per evaluation prompt (higher is better, aligned with its candidates), to be
fed to `ranking_metrics`. They read only the training prompts' histories and targets, never their candidate lists,
so they score the same on the public and on leak-free candidates up to the negatives drawn. On the LastFM
validation file popularity reaches about 0.24 HR@1 and transitions about 0.55-0.6: a recommender that does not
beat them has not learned the users.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._rng import SALT_RANDOM_BASELINE, stream
from .metrics import ranking_metrics
from .readers import RecExample


def random_baseline(eval_examples: Sequence[RecExample], seed: int = 0) -> list[list[float]]:
    """Uniform random scores in [0, 1), from a per-prompt stream (seed, row index)."""
    return [
        stream(seed, i, SALT_RANDOM_BASELINE).random(len(ex.candidates)).tolist() for i, ex in enumerate(eval_examples)
    ]


def item_counts(train_examples: Sequence[RecExample]) -> dict[str, int]:
    """How often each item occurs in the training prompts' histories and targets."""
    counts: dict[str, int] = {}
    for ex in train_examples:
        for name in (*ex.history, ex.target):
            counts[name] = counts.get(name, 0) + 1
    return counts


def _tie_breaker(eval_examples: Sequence[RecExample], seed: int) -> list[np.ndarray]:
    return [stream(seed, i, SALT_RANDOM_BASELINE).random(len(ex.candidates)) for i, ex in enumerate(eval_examples)]


def popularity_baseline(
    train_examples: Sequence[RecExample], eval_examples: Sequence[RecExample], seed: int = 0
) -> list[list[float]]:
    """Score each candidate by its frequency in the training histories and targets (`item_counts`).

    Equal counts are ordered at random (seeded per prompt), so unseen candidates are not all ranked last by the
    pessimistic tie rule.
    """
    counts = item_counts(train_examples)
    jitter = _tie_breaker(eval_examples, seed)
    return [
        (np.array([counts.get(c, 0) for c in ex.candidates], dtype=np.float64) + 0.5 * jitter[i]).tolist()
        for i, ex in enumerate(eval_examples)
    ]


class _PairCounts:
    """Counts of item pairs (a, b) where b occurs 1..`window` steps after a in a training sequence."""

    def __init__(self, train_examples: Sequence[RecExample], window: int):
        self.vocab: dict[str, int] = {}
        sequences = [[*ex.history, ex.target] for ex in train_examples]
        flat = np.fromiter(
            (self.vocab.setdefault(n, len(self.vocab)) for seq in sequences for n in seq), dtype=np.int64
        )
        seq_ids = np.repeat(np.arange(len(sequences)), [len(s) for s in sequences])
        self.size = max(len(self.vocab), 1)
        pair_keys = []
        for d in range(1, min(window, max(len(flat) - 1, 0)) + 1):
            same = seq_ids[:-d] == seq_ids[d:]
            pair_keys.append(flat[:-d][same] * self.size + flat[d:][same])
        joined = np.concatenate(pair_keys) if pair_keys else np.zeros(0, dtype=np.int64)
        self.keys, self.counts = np.unique(joined, return_counts=True)

    def ids(self, names: Sequence[str]) -> np.ndarray:
        return np.fromiter((self.vocab.get(n, -1) for n in names), dtype=np.int64, count=len(names))

    def lookup(self, a: int, b: np.ndarray) -> np.ndarray:
        """Counts of the pairs (a, b[i]); 0 where an id is unknown (-1)."""
        if len(self.keys) == 0 or a < 0:
            return np.zeros(len(b), dtype=np.int64)
        query = a * self.size + b
        pos = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return np.where((b >= 0) & (self.keys[pos] == query), self.counts[pos], 0)


def transition_baseline(
    train_examples: Sequence[RecExample],
    eval_examples: Sequence[RecExample],
    weights: Sequence[float] = (1.0,),
    seed: int = 0,
    *,
    window: int = 1,
) -> list[list[float]]:
    """Score candidates by item-to-item transition counts from the training sequences (history + target).

    With T[a, c] = number of times c occurs 1..`window` steps after a in a training sequence,
    score(c) = sum_j weights[j-1] * T[h[-j], c] for j = 1..len(weights), where h is the prompt's history: with the
    defaults it is how often c directly followed the last history item in training. Larger windows turn it into
    a directed co-occurrence count. Popularity (`item_counts`) breaks ties, then a seeded random order.
    """
    if not weights or any(w < 0 for w in weights):
        raise ValueError(f"weights must be a non-empty sequence of non-negative numbers, got {weights!r}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    pairs = _PairCounts(train_examples, window)
    popularity = item_counts(train_examples)
    max_pop = max(popularity.values(), default=0) + 1
    smallest = min((w for w in weights if w > 0), default=1.0)
    jitter = _tie_breaker(eval_examples, seed)
    out = []
    for i, ex in enumerate(eval_examples):
        cand = pairs.ids(ex.candidates)
        score = np.zeros(len(ex.candidates), dtype=np.float64)
        for j, weight in enumerate(weights[: len(ex.history)], start=1):
            if weight:
                score += weight * pairs.lookup(pairs.vocab.get(ex.history[-j], -1), cand)
        pop = np.array([popularity.get(c, 0) for c in ex.candidates], dtype=np.float64)
        # Tie-breakers stay below the smallest non-zero weight, so they only order equal transition scores
        # (exactly so for integer weights).
        score += 0.5 * smallest * (pop + 0.5 * jitter[i]) / max_pop
        out.append(score.tolist())
    return out


def baseline_scores(
    train_examples: Sequence[RecExample], eval_examples: Sequence[RecExample], seed: int = 0
) -> dict[str, list[list[float]]]:
    """Per-candidate scores of every baseline on `eval_examples`, keyed by name.

    Keys: `random`; `popularity`; `transition_last` (what directly followed the last history item);
    `transition` (what directly followed each of the last three history items, weights 1, 0.5, 0.25) and
    `cooccurrence` (the same weights, counting items up to 10 steps later).
    """
    return {
        "random": random_baseline(eval_examples, seed),
        "popularity": popularity_baseline(train_examples, eval_examples, seed),
        "transition_last": transition_baseline(train_examples, eval_examples, (1.0,), seed),
        "transition": transition_baseline(train_examples, eval_examples, (1.0, 0.5, 0.25), seed),
        "cooccurrence": transition_baseline(train_examples, eval_examples, (1.0, 0.5, 0.25), seed, window=10),
    }


def baseline_metrics(
    train_examples: Sequence[RecExample],
    eval_examples: Sequence[RecExample],
    seed: int = 0,
    ks: Sequence[int] = (1, 5),
) -> dict[str, dict[str, float]]:
    """Ranking metrics (HR@k, NDCG@k, MRR, n) of every baseline of `baseline_scores` on `eval_examples`."""
    targets = [ex.target_index for ex in eval_examples]
    scores = baseline_scores(train_examples, eval_examples, seed)
    return {name: ranking_metrics(s, targets, ks) for name, s in scores.items()}
