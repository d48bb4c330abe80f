"""One objective registry (`trl_dynamicpo.losses.OBJECTIVES`): the config's choices, the sweep's default objectives,
the display names and the decision to build a reference model all follow it."""

import dataclasses
from types import SimpleNamespace

import pytest

from trl_dynamicpo.losses import LOSS_TYPES, OBJECTIVES


def _choices(dataclass_type, name: str) -> list:
    return next(f for f in dataclasses.fields(dataclass_type) if f.name == name).metadata["choices"]


def test_every_name_list_is_the_registry():
    from trl_dynamicpo.config import DynamicPOConfig
    from trl_dynamicpo.pipeline import QuickstartArguments, SweepArguments
    from trl_dynamicpo.variants import OBJECTIVE_NAMES

    assert list(LOSS_TYPES) == list(OBJECTIVES)
    assert list(OBJECTIVE_NAMES) == list(OBJECTIVES)
    assert SweepArguments().objectives == list(OBJECTIVES)
    assert _choices(DynamicPOConfig, "multi_negative_loss") == list(OBJECTIVES)
    assert _choices(QuickstartArguments, "multi_negative_loss") == list(OBJECTIVES)


@pytest.mark.parametrize("objective", list(OBJECTIVES))
@pytest.mark.parametrize("reference_free", [False, True])
def test_the_reference_model_follows_the_registry(objective, reference_free):
    from trl_dynamicpo.losses import uses_reference_model

    args = SimpleNamespace(multi_negative_loss=objective, reference_free=reference_free)
    assert uses_reference_model(args) is not (OBJECTIVES[objective].reference_free or reference_free)
    assert uses_reference_model(args) is (objective != "mppo" and not reference_free)  # the paper's three objectives
