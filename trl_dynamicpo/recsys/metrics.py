"""Recommendation metrics: parsing generated answers, the generation protocol, and ranking metrics.

Generation protocol (LLaRA / S-DPO / DynamicPO): an answer is *valid* when it names exactly one candidate, and a
*hit* when that candidate is the target. HR@1 = hits / prompts, ValidRatio = valid answers / prompts.

Ranking protocol: candidates are ranked by a score (e.g. log pi(candidate | prompt)); the target's rank is
pessimistic: rank = 1 + number of other candidates scoring higher than *or equal to* the target, so ties never
help (a model that scores everything equally gets rank = number of candidates, not 1). NaN scores count as -inf.
HR@k = share with rank <= k, NDCG@k = mean of 1/log2(1 + rank) over prompts with rank <= k (0 otherwise; one
relevant item, so the ideal DCG is 1), MRR = mean of 1/rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .readers import RecExample


def normalize_text(text: str) -> str:
    """Case-fold and collapse runs of whitespace to one space (strip the ends)."""
    return " ".join(text.casefold().split())


def parse_answer(text: str, candidates: Sequence[str]) -> list[int]:
    """Indices (ascending) of the candidates that `text` names.

    Matching is case-insensitive and whitespace-normalised. A candidate is named when it occurs in the text at
    word boundaries (an occurrence glued to a letter or digit, like "Jet" in "Jethro Tull", does not count) and at
    least one of its occurrences is not inside the occurrence of a longer candidate: with candidates "Muse" and
    "Muse Tribute", the answer "Muse Tribute" names only "Muse Tribute", while "Muse or Muse Tribute" names both.
    """
    answer = normalize_text(text)
    spans: list[tuple[int, int, int]] = []  # (start, end, candidate index)
    for index, name in enumerate(candidates):
        needle = normalize_text(name)
        if not needle:
            continue
        start = answer.find(needle)
        while start != -1:
            end = start + len(needle)
            left_ok = start == 0 or not (needle[0].isalnum() and answer[start - 1].isalnum())
            right_ok = end == len(answer) or not (needle[-1].isalnum() and answer[end].isalnum())
            if left_ok and right_ok:
                spans.append((start, end, index))
            start = answer.find(needle, start + 1)
    named = set()
    for start, end, index in spans:
        covered = any(s <= start and end <= e and (e - s) > (end - start) for s, e, other in spans if other != index)
        if not covered:
            named.add(index)
    return sorted(named)


def generation_metrics(answers: Sequence[str], examples: Sequence[RecExample]) -> dict[str, float]:
    """HR@1 and ValidRatio of generated answers (see the module docstring), plus `n`."""
    if len(answers) != len(examples):
        raise ValueError(f"{len(answers)} answers for {len(examples)} examples")
    if not examples:
        return {"hr@1": float("nan"), "valid_ratio": float("nan"), "n": 0}
    hits = valid = 0
    for answer, ex in zip(answers, examples):
        named = parse_answer(answer, ex.candidates)
        if len(named) == 1:
            valid += 1
            hits += named[0] == ex.target_index
    return {"hr@1": hits / len(examples), "valid_ratio": valid / len(examples), "n": len(examples)}


def _as_score_matrix(scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(scores as float64 with -inf for NaN, mask of real entries); ragged lists are padded."""
    if hasattr(scores, "detach"):  # torch tensor
        scores = scores.detach().float().cpu().numpy()
    if isinstance(scores, np.ndarray):
        matrix = scores.astype(np.float64, copy=True)
        if matrix.ndim != 2:
            raise ValueError(f"scores must be 2-D (prompts x candidates), got shape {matrix.shape}")
        mask = np.ones(matrix.shape, dtype=bool)
    else:
        rows = [np.asarray(row, dtype=np.float64).reshape(-1) for row in scores]
        width = max((len(row) for row in rows), default=0)
        matrix = np.full((len(rows), width), -np.inf)
        mask = np.zeros((len(rows), width), dtype=bool)
        for i, row in enumerate(rows):
            matrix[i, : len(row)] = row
            mask[i, : len(row)] = True
    matrix[np.isnan(matrix)] = -np.inf
    return matrix, mask


def target_ranks(scores: Any, target_indices: Sequence[int]) -> np.ndarray:
    """Pessimistic 1-based rank of each target among its row's candidates (ties rank the target last)."""
    matrix, mask = _as_score_matrix(scores)
    targets = np.asarray(target_indices, dtype=np.int64).reshape(-1)
    if len(targets) != len(matrix):
        raise ValueError(f"{len(targets)} target indices for {len(matrix)} score rows")
    if len(targets) == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.arange(len(matrix))
    if (targets < 0).any() or (targets >= mask.sum(axis=1)).any():
        bad = int(np.flatnonzero((targets < 0) | (targets >= mask.sum(axis=1)))[0])
        raise ValueError(f"row {bad}: target index {targets[bad]} is out of range")
    target_scores = matrix[rows, targets][:, None]
    return ((matrix >= target_scores) & mask).sum(axis=1)


def ranking_metrics(scores: Any, target_indices: Sequence[int], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """HR@k and NDCG@k for each k in `ks`, MRR and `n`, from per-candidate scores (higher is better).

    Args:
        scores: prompts x candidates, as a list of lists (rows may differ in length), a numpy array or a tensor.
        target_indices: position of the target in each row.
        ks: cut-offs.

    Ties are pessimistic (see the module docstring). Returns e.g.
    `{"hr@1", "ndcg@1", "hr@5", "ndcg@5", "mrr", "n"}` as Python floats (`n` an int).
    """
    ranks = target_ranks(scores, target_indices)
    out: dict[str, float] = {}
    if len(ranks) == 0:
        out.update({f"{m}@{k}": float("nan") for k in ks for m in ("hr", "ndcg")})
        out.update({"mrr": float("nan"), "n": 0})
        return out
    gains = 1.0 / np.log2(ranks + 1.0)
    for k in ks:
        within = ranks <= k
        out[f"hr@{k}"] = float(within.mean())
        out[f"ndcg@{k}"] = float(np.where(within, gains, 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    out["n"] = len(ranks)
    return out
