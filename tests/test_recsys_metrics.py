import math

import numpy as np
import pytest
import torch

from trl_dynamicpo.recsys import RecExample, generation_metrics, parse_answer, ranking_metrics
from trl_dynamicpo.recsys.metrics import target_ranks


CANDIDATES = ["Muse", "Muse Tribute", "Jet", "Jethro Tull", "The Cure", "Air", "Sixx:A.M."]


@pytest.mark.parametrize(
    "answer, named",
    [
        (" Muse", ["Muse"]),
        ("muse", ["Muse"]),
        ("  MUSE  \n", ["Muse"]),
        (" Muse Tribute", ["Muse Tribute"]),  # "Muse" only inside the longer name
        (" muse   tribute", ["Muse Tribute"]),  # whitespace and case normalised
        ("Muse or Muse Tribute", ["Muse", "Muse Tribute"]),
        (" Jethro Tull", ["Jethro Tull"]),
        (" Jetpack", []),  # no word boundary
        (" The Cure, then Air", ["The Cure", "Air"]),
        (" Sixx:A.M.", ["Sixx:A.M."]),
        (" Radiohead", []),
        ("", []),
    ],
)
def test_parse_answer(answer, named):
    assert [CANDIDATES[i] for i in parse_answer(answer, CANDIDATES)] == named


def test_generation_metrics_hand_made():
    examples = [
        RecExample(["x"], CANDIDATES, "Muse"),
        RecExample(["x"], CANDIDATES, "Muse Tribute"),
        RecExample(["x"], CANDIDATES, "Air"),
        RecExample(["x"], CANDIDATES, "Jet"),
        RecExample(["x"], CANDIDATES, "The Cure"),
    ]
    answers = [
        " Muse",  # valid hit
        " Muse Tribute",  # valid hit (not two names)
        " Air and The Cure",  # names two candidates: invalid
        " Jethro Tull",  # valid miss
        " nothing useful",  # invalid
    ]
    result = generation_metrics(answers, examples)
    assert result == {"hr@1": 2 / 5, "valid_ratio": 3 / 5, "n": 5}
    with pytest.raises(ValueError):
        generation_metrics(answers[:2], examples)


def test_ranking_metrics_known_values():
    scores = [
        [0.9, 0.1, 0.2, 0.3],  # target 0 at rank 1
        [0.5, 0.4, 0.3, 0.2],  # target 2 at rank 3
        [0.1, 0.2, 0.3, 0.4],  # target 0 at rank 4
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # target 0 at rank 6 (longer row)
    ]
    targets = [0, 2, 0, 0]
    result = ranking_metrics(scores, targets, ks=(1, 3, 5))
    ranks = np.array([1, 3, 4, 6])
    assert target_ranks(scores, targets).tolist() == ranks.tolist()
    assert result["hr@1"] == pytest.approx(0.25)
    assert result["hr@3"] == pytest.approx(0.5)
    assert result["hr@5"] == pytest.approx(0.75)
    assert result["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(5)) / 4)
    assert result["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 4 + 1 / 6) / 4)
    assert result["n"] == 4


def test_ranking_ties_are_pessimistic_and_inputs_agree():
    scores = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 2.0, 0.0], [0.0, float("nan"), -1.0, 0.5]])
    targets = [0, 2, 1]
    # All equal: the target ranks last. One tie: behind the other 2.0. NaN counts as -inf: last.
    assert target_ranks(scores, targets).tolist() == [4, 2, 4]
    a = ranking_metrics(scores, targets)
    b = ranking_metrics(torch.tensor(scores), targets)
    c = ranking_metrics(scores.tolist(), targets)
    assert a == b == c
    assert a["hr@1"] == 0.0 and a["hr@5"] == 1.0


def test_ranking_metrics_errors_and_empty():
    with pytest.raises(ValueError, match="row 0"):
        ranking_metrics([[0.1, 0.2]], [2])
    with pytest.raises(ValueError):
        ranking_metrics([[0.1, 0.2]], [0, 1])
    empty = ranking_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["hr@1"])
