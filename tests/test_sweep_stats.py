"""Paired statistics of the sweep report, against direct slow computations."""

import math
import random

import numpy as np
import pytest

from trl_dynamicpo.sweep import build_grid, paired_comparison
from trl_dynamicpo.sweep.stats import binomial_two_sided_p


def slow_exact_mcnemar(wins: int, losses: int) -> float:
    n = wins + losses
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.mark.parametrize("wins,losses", [(0, 0), (3, 3), (10, 2), (80, 24), (54, 23), (400, 350)])
def test_exact_mcnemar_matches_binomial_sum(wins, losses):
    assert binomial_two_sided_p(min(wins, losses), wins + losses) == pytest.approx(
        slow_exact_mcnemar(wins, losses), rel=1e-9, abs=1e-300
    )


def test_counts_difference_and_symmetry():
    rng = random.Random(0)
    a = [rng.random() < 0.7 for _ in range(1000)]
    b = [x if rng.random() < 0.9 else not x for x in a]
    wins = sum(x and not y for x, y in zip(a, b))
    losses = sum(y and not x for x, y in zip(a, b))
    cmp = paired_comparison(a, b)
    assert (cmp.wins, cmp.losses, cmp.n) == (wins, losses, 1000)
    assert cmp.diff == pytest.approx((wins - losses) / 1000)
    assert cmp.mean_a - cmp.mean_b == pytest.approx(cmp.diff)
    assert cmp.mcnemar_chi2 == pytest.approx((abs(wins - losses) - 1) ** 2 / (wins + losses))
    assert cmp.ci_low <= cmp.diff <= cmp.ci_high
    back = paired_comparison(b, a)
    assert back.diff == pytest.approx(-cmp.diff)
    assert (back.wins, back.losses) == (losses, wins)


def test_bootstrap_interval_agrees_with_the_normal_interval_on_many_prompts():
    rng = np.random.default_rng(1)
    a = rng.random(5000) < 0.72
    b = np.where(rng.random(5000) < 0.85, a, rng.random(5000) < 0.70)
    cmp = paired_comparison(a.astype(float), b.astype(float), n_boot=4000)
    d = a.astype(float) - b.astype(float)
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert cmp.normal_ci_low == pytest.approx(d.mean() - 1.959964 * se, abs=1e-6)
    assert cmp.ci_low == pytest.approx(cmp.normal_ci_low, abs=0.3 * se)
    assert cmp.ci_high == pytest.approx(cmp.normal_ci_high, abs=0.3 * se)


def test_identical_models_and_clear_winner():
    same = paired_comparison([1, 0, 1, 1], [1, 0, 1, 1])
    assert (same.diff, same.ci_low, same.ci_high, same.mcnemar_p) == (0, 0, 0, 1)
    assert not same.significant
    winner = paired_comparison([1] * 60 + [0] * 40, [0] * 60 + [0] * 40)
    assert winner.significant and winner.ci_low > 0.4 and winner.mcnemar_p < 1e-10


def test_seed_averaged_hits():
    cmp = paired_comparison([0.5, 1.0, 0.0], [0.0, 1.0, 0.5])
    assert (cmp.wins, cmp.losses) == (0.5, 0.5)
    assert cmp.diff == pytest.approx(0.0)


def test_misaligned_vectors_are_refused():
    with pytest.raises(ValueError, match="aligned"):
        paired_comparison([1, 0], [1, 0, 1])


def test_grid_order_names_and_errors():
    grid = build_grid([1, 19], ["dmpo"], ["plain", "dynamicpo"], [0], ablation_ks=[19], extra_seeds=[1],
                      extra_seed_ks=[19])  # fmt: skip
    assert [p.name for p in grid] == [
        "dmpo-plain-k1-s0", "dmpo-plain-k19-s0", "dmpo-dynamicpo-k1-s0", "dmpo-dynamicpo-k19-s0",
        "dmpo-selection_only-k19-s0", "dmpo-beta_only-k19-s0", "dmpo-plain-k19-s1", "dmpo-dynamicpo-k19-s1",
    ]  # fmt: skip
    assert grid[3].settings() == {"multi_negative_loss": "dmpo", "boundary_selection": True, "dynamic_beta": True,
                                  "num_negatives": 19, "seed": 0}  # fmt: skip
    with pytest.raises(ValueError, match="unknown variant"):
        build_grid([1], ["dmpo"], ["dynamic"])
    with pytest.raises(ValueError, match="unknown objective"):
        build_grid([1], ["dpo"], ["plain"])
    with pytest.raises(ValueError, match="positive"):
        build_grid([0], ["dmpo"], ["plain"])
