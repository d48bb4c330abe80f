"""The names of the objectives and of DynamicPO's 2 x 2 grid of switches, declared once.

Every place that names a method (the CLI's `--variant`, the recipes, the sweep, the benchmark, the model card)
uses these tables, so that "plain DMPO" and "DynamicPO (DMPO)" mean the same settings everywhere.

=================  ====================  ==============  ==================================
variant            `boundary_selection`  `dynamic_beta`  display name (objective DMPO)
=================  ====================  ==============  ==================================
`plain`            off                   off             DMPO
`dynamicpo`        on                    on              DynamicPO (DMPO)
`selection_only`   on                    off             DynamicPO w/o dynamic beta (DMPO)
`beta_only`        off                   on              DynamicPO w/o selection (DMPO)
=================  ====================  ==============  ==================================
"""

from __future__ import annotations

from dataclasses import dataclass

from .losses import OBJECTIVES


# Display names of the base objectives (`DynamicPOConfig.multi_negative_loss`), from the registry.
OBJECTIVE_NAMES = {name: objective.display_name for name, objective in OBJECTIVES.items()}


@dataclass(frozen=True)
class Variant:
    """One setting of DynamicPO's two switches."""

    name: str
    boundary_selection: bool
    dynamic_beta: bool
    label: str  # short label for plots and tables

    def display(self, objective: str) -> str:
        """'DMPO', 'DynamicPO (DMPO)', 'DynamicPO w/o selection (S-DPO)', ..."""
        base = OBJECTIVE_NAMES[objective]
        if self.name == "plain":
            return base
        return f"{self.label} ({base})"

    def settings(self) -> dict[str, bool]:
        """The `DynamicPOConfig` fields this variant sets."""
        return {"boundary_selection": self.boundary_selection, "dynamic_beta": self.dynamic_beta}


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("plain", False, False, "plain"),
        Variant("dynamicpo", True, True, "DynamicPO"),
        Variant("selection_only", True, False, "DynamicPO w/o dynamic beta"),
        Variant("beta_only", False, True, "DynamicPO w/o selection"),
    )
}


def variant_of(boundary_selection: bool, dynamic_beta: bool) -> Variant:
    """The variant with these switch values."""
    for variant in VARIANTS.values():
        if (variant.boundary_selection, variant.dynamic_beta) == (bool(boundary_selection), bool(dynamic_beta)):
            return variant
    raise AssertionError("unreachable: the four variants cover every pair of switches")


def method_name(args) -> str:
    """Display name of the method a `DynamicPOConfig` trains, e.g. 'DynamicPO (DMPO)' or 'S-DPO'."""
    return variant_of(args.boundary_selection, args.dynamic_beta).display(args.multi_negative_loss)
