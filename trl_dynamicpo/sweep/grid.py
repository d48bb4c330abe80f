"""The grid of a sweep: which (objective, variant, K, seed) runs it trains, in which order, under which names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..losses import LOSS_TYPES
from ..variants import VARIANTS


@dataclass(frozen=True)
class GridPoint:
    """One preference-optimisation run of a sweep."""

    objective: str
    variant: str
    k: int
    seed: int

    @property
    def name(self) -> str:
        """Folder name of the run, e.g. `dmpo-dynamicpo-k15-s0`."""
        return f"{self.objective}-{self.variant}-k{self.k}-s{self.seed}"

    @property
    def display(self) -> str:
        return f"{VARIANTS[self.variant].display(self.objective)}, K={self.k}, seed {self.seed}"

    def settings(self) -> dict[str, object]:
        """The `train` keys that select this point (set on top of the recipe)."""
        return {
            "multi_negative_loss": self.objective,
            **VARIANTS[self.variant].settings(),
            "num_negatives": self.k,
            "seed": self.seed,
        }


def build_grid(
    ks: Sequence[int],
    objectives: Sequence[str],
    variants: Sequence[str],
    seeds: Sequence[int] = (0,),
    *,
    ablation_ks: Sequence[int] = (),
    extra_seeds: Sequence[int] = (),
    extra_seed_ks: Sequence[int] = (),
) -> list[GridPoint]:
    """The runs of a sweep, without repeats, in training order.

    The main grid is objectives x variants x ks for every seed in `seeds`. `ablation_ks` adds DMPO's two one-switch
    ablations (`selection_only`, `beta_only`) at those K; `extra_seeds` adds DMPO `plain` and `dynamicpo` at
    `extra_seed_ks` (default: `ks`) for more seeds, where the paired comparisons need them.
    """
    _check(objectives, LOSS_TYPES, "objective")
    _check(variants, VARIANTS, "variant")
    if any(k < 1 for k in (*ks, *ablation_ks, *extra_seed_ks)):
        raise ValueError(f"every K must be a positive number of negatives; got ks={list(ks)}")
    points: list[GridPoint] = []
    for seed in seeds:
        points += [GridPoint(o, v, k, seed) for o in objectives for v in variants for k in ks]
        points += [GridPoint("dmpo", v, k, seed) for v in ("selection_only", "beta_only") for k in ablation_ks]
    for seed in extra_seeds:
        points += [GridPoint("dmpo", v, k, seed) for v in ("plain", "dynamicpo") for k in (extra_seed_ks or ks)]
    return list(dict.fromkeys(points))


def _check(values: Iterable[str], allowed, what: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
