"""The pipeline as a library: recipes resolved to their dataclasses, and SFT, preference training and evaluation.

    from trl_dynamicpo.pipeline import resolve_recipe, run_eval, run_sft, run_train

    run_sft(*resolve_recipe("recipe.yaml", "sft"))
    run_train(*resolve_recipe("recipe.yaml", "train", variant="dmpo_plain", overrides={"learning_rate": 1e-4}))
    metrics = run_eval(*resolve_recipe("recipe.yaml", "eval", variant="dmpo_plain"))

`trl-dynamicpo sft|train|eval|sweep|quickstart` (`trl_dynamicpo.cli`) parses its flags into these same dataclasses
and calls these functions. Modules:

- `recipes`: `load_recipe`, `resolve_recipe`, `recipe_settings`, `command_dataclasses`, `parse_overrides`.
- `arguments`: `RecDataArguments`, `EvalArguments`, `SweepArguments`, `QuickstartArguments`.
- `data`: `load_rec_data` (the files or the bundled sample, leak-free candidates), `prompt_builder`.
- `modeling`: model loading with TRL's `ModelConfig` helpers, QLoRA, and the SFT -> `train` handoff.
- `sft`, `train`, `evaluate`, `quickstart`: `run_sft`, `run_train`, `run_eval` (and `evaluate_examples`),
  `run_quickstart`.
- `training`, `records`, `runtime`: what the run functions share (trainer set-up, the run record, devices, logs).

Names are imported lazily, so `import trl_dynamicpo.pipeline` loads neither torch nor transformers.
"""

from importlib import import_module
from typing import TYPE_CHECKING


_LAZY = {
    "SECTIONS": "recipes",
    "load_recipe": "recipes",
    "merge_recipes": "recipes",
    "stage_config": "recipes",
    "recipe_settings": "recipes",
    "resolve_recipe": "recipes",
    "command_dataclasses": "recipes",
    "parse_overrides": "recipes",
    "RecDataArguments": "arguments",
    "EvalArguments": "arguments",
    "SweepArguments": "arguments",
    "QuickstartArguments": "arguments",
    "RecData": "data",
    "load_rec_data": "data",
    "prompt_builder": "data",
    "run_sft": "sft",
    "run_train": "train",
    "run_eval": "evaluate",
    "evaluate_examples": "evaluate",
    "format_summary": "evaluate",
    "run_quickstart": "quickstart",
}

__all__ = [
    "SECTIONS",
    "load_recipe",
    "merge_recipes",
    "stage_config",
    "recipe_settings",
    "resolve_recipe",
    "command_dataclasses",
    "parse_overrides",
    "RecDataArguments",
    "EvalArguments",
    "SweepArguments",
    "QuickstartArguments",
    "RecData",
    "load_rec_data",
    "prompt_builder",
    "run_sft",
    "run_train",
    "run_eval",
    "evaluate_examples",
    "format_summary",
    "run_quickstart",
]

if TYPE_CHECKING:
    from .arguments import EvalArguments, QuickstartArguments, RecDataArguments, SweepArguments
    from .data import RecData, load_rec_data, prompt_builder
    from .evaluate import evaluate_examples, format_summary, run_eval
    from .quickstart import run_quickstart
    from .recipes import (
        SECTIONS,
        command_dataclasses,
        load_recipe,
        merge_recipes,
        parse_overrides,
        recipe_settings,
        resolve_recipe,
        stage_config,
    )
    from .sft import run_sft
    from .train import run_train


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
