"""Paired statistics for comparing two models on the same evaluation prompts.

Two recommenders evaluated on the same N prompts give two 0/1 hit vectors a and b (HR@1 per prompt). Their
difference is reported as a paired comparison, never as two means side by side:

* wins = #{a_i = 1, b_i = 0}, losses = #{a_i = 0, b_i = 1}; the difference of hit rates is (wins - losses) / N.
* McNemar's test on the discordant pairs: chi2 = (|wins - losses| - 1)^2 / (wins + losses) with continuity
  correction, and the exact two-sided binomial p-value P = min(1, 2 * P[Bin(wins + losses, 1/2) <= min(wins,
  losses)]).
* A 95% confidence interval for the difference of hit rates: the paired bootstrap (prompts resampled with
  replacement, the same resample for both models; percentile interval), and the normal interval
  d +- 1.96 * sqrt((wins + losses - N d^2) / (N (N - 1))) for comparison.

Several seeds of each model are handled by averaging each prompt's hits over seeds first (a_i in [0, 1]); the
bootstrap then resamples prompts, which keeps the pairing and includes seed variance only through those means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """The paired difference a - b of two hit vectors on the same prompts (see the module docstring)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    wins: float
    losses: float
    ci_low: float
    ci_high: float
    normal_ci_low: float
    normal_ci_high: float
    mcnemar_chi2: float
    mcnemar_p: float

    @property
    def significant(self) -> bool:
        """True when the 95% bootstrap interval excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self, digits: int = 3) -> str:
        """e.g. '+0.012 [+0.004, +0.020] (+61/-28, McNemar p=0.0007)'."""
        wins = f"{self.wins:.0f}" if float(self.wins).is_integer() else f"{self.wins:.1f}"
        losses = f"{self.losses:.0f}" if float(self.losses).is_integer() else f"{self.losses:.1f}"
        return (
            f"{self.diff:+.{digits}f} [{self.ci_low:+.{digits}f}, {self.ci_high:+.{digits}f}] "
            f"(+{wins}/-{losses}, McNemar p={_format_p(self.mcnemar_p)})"
        )


def _format_p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def binomial_two_sided_p(successes: int, trials: int) -> float:
    """Exact two-sided p-value of `successes` out of `trials` under p = 1/2 (McNemar's exact test)."""
    if trials == 0:
        return 1.0
    k = min(successes, trials - successes)
    # log-space binomial coefficients: exact enough for trials in the thousands
    log_terms = [
        math.lgamma(trials + 1) - math.lgamma(i + 1) - math.lgamma(trials - i + 1) - trials * math.log(2)
        for i in range(k + 1)
    ]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2.0 * tail)


def paired_comparison(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> PairedComparison:
    """Compare per-prompt scores `a` and `b` (hits in {0, 1}, or hit rates averaged over seeds in [0, 1]).

    Args:
        a, b: aligned per-prompt values for the two models (same prompts, same order).
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap resampling.
        level: confidence level of the intervals.

    Returns:
        A `PairedComparison` of a - b. The McNemar statistics use the discordant counts (rounded for averaged
        hits).
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired_comparison needs two aligned 1-D vectors, got shapes {x.shape} and {y.shape}")
    n = len(x)
    if n == 0:
        nan = float("nan")
        return PairedComparison(0, nan, nan, nan, 0, 0, nan, nan, nan, nan, nan, nan)
    d = x - y
    wins, losses = float(np.clip(d, 0, None).sum()), float(np.clip(-d, 0, None).sum())
    diff = float(d.mean())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = (float(v) for v in np.quantile(means, [alpha, 1 - alpha]))
    z = _normal_quantile(1 - alpha)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    discordant = wins + losses
    chi2 = (abs(wins - losses) - 1) ** 2 / discordant if discordant > 0 else 0.0
    p = binomial_two_sided_p(int(round(min(wins, losses))), int(round(discordant)))
    return PairedComparison(
        n=n,
        mean_a=float(x.mean()),
        mean_b=float(y.mean()),
        diff=diff,
        wins=wins,
        losses=losses,
        ci_low=low,
        ci_high=high,
        normal_ci_low=diff - z * se,
        normal_ci_high=diff + z * se,
        mcnemar_chi2=float(chi2),
        mcnemar_p=p,
    )


def mean_interval(values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95):
    """(mean, low, high): a bootstrap percentile interval of the mean of per-prompt values (for plot bands)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(x.mean()), float(low), float(high)


def _normal_quantile(q: float) -> float:
    return NormalDist().inv_cdf(q)
