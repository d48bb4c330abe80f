"""Recipes: one YAML file for the whole pipeline, resolved to each command's dataclasses without a command line.

    from trl_dynamicpo.pipeline import resolve_recipe, run_train

    data_args, training_args, model_args = resolve_recipe("recipe.yaml", "train", overrides={"learning_rate": 1e-4})
    run_train(data_args, training_args, model_args)

A recipe is an ordinary TRL config file (keys are the dataclass fields, `env:` sets environment variables), with
four additions so that one file drives `sft`, `train` and `eval` and recipes share their common setup:

* `base: FILE` (a path relative to the recipe's folder) reads FILE first and lays the recipe over it: a key the
  recipe sets wins, and mappings (the sections, `variants:` and each variant, `env:`) are merged key by key, so
  a recipe states only what differs from its base. A base may have a base of its own (cycles are an error).
  Other paths in a recipe (data files, output folders) are relative to the working directory, as in TRL;
* top-level keys are shared; a section named after the command (`sft:`, `train:`, `eval:`, `sweep:`,
  `quickstart:`) overrides them for that command;
* `variants:` maps a name to extra keys on top of the `train` section (the baselines and ablations of a recipe);
  the `eval` of a variant evaluates that variant's `output_dir`;
* a key that belongs to another command only (say `beta` while running `sft`) is ignored; a key that belongs
  to no command is an error with a did-you-mean hint, so typos do not pass silently.

Precedence, lowest first: the dataclass defaults (TRL's for TRL's fields: `beta` is 0.1 unless the recipe says, as
the paper recipes do, `beta: 1.0`), CPU-friendly defaults (`bf16: false` without a bf16 GPU, see `cpu_defaults`),
shared keys, the command's section, the variant, then the overrides (`resolve_recipe`) or the command-line flags
(`trl-dynamicpo <command>`, which parses with `trl.TrlParser` on top of `recipe_settings`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .runtime import cpu_defaults


SECTIONS = ("sft", "train", "eval", "sweep", "quickstart")
RESERVED = ("env", "variants", *SECTIONS)
BASE_KEY = "base"

Recipe = str | os.PathLike | Mapping[str, Any]


def command_dataclasses(command: str) -> tuple[type, ...]:
    """The dataclasses a recipe command resolves to, in the order `resolve_recipe` returns them.

    - `sft`:   `RecDataArguments`, `trl.SFTConfig`, `trl.ModelConfig`
    - `train`: `RecDataArguments`, `DynamicPOConfig`, `trl.ModelConfig`
    - `eval`:  `RecDataArguments`, `EvalArguments`, `trl.ModelConfig`
    - `sweep`: `SweepArguments`;  `quickstart`: `QuickstartArguments`
    """
    # Imported here: the trainer configs load torch, which the data tools' start-up must not pay for.
    from trl import ModelConfig, SFTConfig

    from ..config import DynamicPOConfig
    from .arguments import EvalArguments, QuickstartArguments, RecDataArguments, SweepArguments

    table = {
        "sft": (RecDataArguments, SFTConfig, ModelConfig),
        "train": (RecDataArguments, DynamicPOConfig, ModelConfig),
        "eval": (RecDataArguments, EvalArguments, ModelConfig),
        "sweep": (SweepArguments,),
        "quickstart": (QuickstartArguments,),
    }
    if command not in table:
        raise ValueError(f"No recipe command {command!r}; choose one of {list(table)}.")
    return table[command]


def _read_mapping(path: Path) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(config).__name__}.")
    return config


def merge_recipes(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`: mappings present in both are merged key by key (recursively), any other value
    of `override` replaces the base's."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_recipes(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a recipe YAML file (a mapping) and resolve its `base:` chain (see the module docstring)."""
    current, chain, layers = Path(path), [], []
    while True:
        if current.resolve() in chain:
            cycle = " -> ".join(map(str, [*chain, current.resolve()]))
            raise ValueError(f"{path}: the `{BASE_KEY}:` files form a cycle: {cycle}.")
        chain.append(current.resolve())
        layer = _read_mapping(current)
        layers.append(layer)
        base = layer.pop(BASE_KEY, None)
        if base is None:
            break
        if not isinstance(base, str):
            raise ValueError(f"{current}: `{BASE_KEY}` must be a file path, got {type(base).__name__}.")
        parent = current.parent / base
        if not parent.is_file():
            raise FileNotFoundError(f"{current}: `{BASE_KEY}: {base}` names no file (looked for {parent}).")
        current = parent
    config: dict[str, Any] = {}
    for layer in reversed(layers):  # the base first, the recipe given last
        config = merge_recipes(config, layer)
    return config


def stage_config(config: Mapping[str, Any], stage: str, variant: str | None = None, path: str = "recipe") -> dict:
    """The flat key/value mapping for one command: shared keys, then its section, then the variant."""
    merged = {k: v for k, v in config.items() if k not in RESERVED}
    section = config.get(stage) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{path}: section '{stage}' must be a mapping.")
    merged.update(section)
    if variant is not None:
        if stage not in ("train", "eval"):
            raise ValueError(f"A variant selects a `train` variant (and `eval` of its output); not `{stage}`.")
        variants = config.get("variants") or {}
        if variant not in variants:
            raise ValueError(f"{path}: no variant {variant!r}; the recipe defines {sorted(variants) or 'none'}.")
        if stage == "train":
            merged.update(variants[variant] or {})
        else:
            # Evaluate what `train --variant NAME` wrote, into its own folder.
            trained = stage_config(config, "train", variant, path)
            if "output_dir" not in trained:
                raise ValueError(f"{path}: variant {variant!r} has no output_dir to evaluate.")
            merged["model_name_or_path"] = trained["output_dir"]
            merged.pop("output_dir", None)
    return merged


def _field_names(dataclass_types: Iterable[type]) -> set[str]:
    return {f.name for dc in dataclass_types for f in dataclasses.fields(dc) if f.init}


def all_command_fields() -> set[str]:
    """Every key any recipe command accepts (used to tell another command's key from a typo)."""
    return _field_names(dc for command in SECTIONS for dc in command_dataclasses(command))


def _unknown_keys(keys: Iterable[str], known: set[str], where: str) -> ValueError:
    hints = []
    for key in sorted(keys):
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ValueError(f"{where}: {', '.join(hints)}.")


def recipe_settings(
    recipe: Mapping[str, Any] | None,
    command: str,
    variant: str | None = None,
    dataclass_types: Sequence[type] | None = None,
    source: str = "recipe",
) -> dict[str, Any]:
    """The values `command` takes from a loaded recipe, over the CPU-friendly defaults: its shared keys, section and
    variant, without the keys of other commands. A key of no command is a `ValueError` naming the closest field.

    `dataclass_types` defaults to `command_dataclasses(command)`; `source` names the recipe in error messages.
    """
    dataclass_types = command_dataclasses(command) if dataclass_types is None else dataclass_types
    settings = cpu_defaults(dataclass_types)
    if recipe is None:
        return settings
    merged = stage_config(recipe, command, variant, source)
    own = _field_names(dataclass_types)
    foreign = [key for key in merged if key not in own]
    if foreign:
        known = all_command_fields() | own
        unknown = [key for key in foreign if key not in known]
        if unknown:
            raise _unknown_keys(unknown, known, f"{source}: unknown key(s) for `{command}`")
    settings.update({key: value for key, value in merged.items() if key in own})
    return settings


def apply_env(recipe: Mapping[str, Any], source: str = "recipe") -> None:
    """Set the environment variables of the recipe's `env:` mapping (as `trl.TrlParser` does with a config file)."""
    env = recipe.get("env") or {}
    if not isinstance(env, Mapping):
        raise ValueError(f"{source}: `env` must be a mapping of environment variables.")
    for key, value in env.items():
        os.environ[key] = str(value)


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`["learning_rate=1e-4", "loss_type=[sigmoid, sft]"]` -> `{"learning_rate": "1e-4", "loss_type": [...]}`.

    Each item is `KEY=VALUE` with VALUE read as YAML, as in a recipe (so `1e-4` stays a string there too, and
    becomes a float when it sets a float field).
    """
    import yaml

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Override {item!r} is not KEY=VALUE (for instance learning_rate=1e-4).")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _command_line_type(hint: Any) -> Any:
    """The type `transformers.HfArgumentParser` parses a field's command-line string with: Optional[X] -> X,
    `X | str` -> X, `list[X]` -> X (its rules, so that a recipe string means here what it means to the CLI)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if type(None) not in args:
            hint = args[0] if args[1] is str else args[1]
        elif bool not in args:
            hint = args[0] if args[1] is type(None) else args[1]
        else:
            return bool
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0]
    return hint


def _from_string(value: str, hint: Any, name: str) -> Any:
    """A recipe's string for a numeric or boolean field, converted as a command-line flag would be."""
    from transformers.hf_argparser import string_to_bool

    kind = _command_line_type(hint)
    if kind not in (bool, int, float):
        return value
    try:
        return string_to_bool(value) if kind is bool else kind(value)
    except (ValueError, TypeError) as err:  # argparse's error, as a ValueError
        raise ValueError(f"{name}={value!r} is not a valid {kind.__name__}.") from err


def build_arguments(dataclass_types: Sequence[type], settings: Mapping[str, Any]) -> tuple:
    """One instance per dataclass, each from the keys of `settings` that are its fields.

    A key two dataclasses share (`train`'s `drop_invalid_rows`, in `RecDataArguments` and `DynamicPOConfig`) sets
    both. A string given to a numeric or boolean field is converted as on the command line (`"1e-4"`, `"true"`);
    any other value is passed as it is.
    """
    built = []
    for dc in dataclass_types:
        hints = typing.get_type_hints(dc)
        kwargs = {}
        for f in dataclasses.fields(dc):
            if f.init and f.name in settings:
                value = settings[f.name]
                kwargs[f.name] = _from_string(value, hints[f.name], f.name) if isinstance(value, str) else value
        built.append(dc(**kwargs))
    return tuple(built)


def resolve_recipe(
    recipe: Recipe,
    command: str,
    variant: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple:
    """The dataclasses of `command` (see `command_dataclasses`) for a recipe, as `trl-dynamicpo <command>` builds them.

    Args:
        recipe: a recipe file (its `base:` chain resolved) or an already loaded mapping (without `base:`).
        command: "sft", "train", "eval", "sweep" or "quickstart".
        variant: one of the recipe's `variants:` (for "train", and for "eval" of that variant's output).
        overrides: keys set last, as command-line flags would be; each must be a field of the command.

    The recipe's `env:` is applied to `os.environ`. Returns one instance per dataclass, in order.
    """
    if isinstance(recipe, Mapping):
        if BASE_KEY in recipe:
            raise ValueError(f"A recipe given as a mapping has no folder for `{BASE_KEY}:`; pass its file instead.")
        config, source = dict(recipe), "recipe"
    else:
        config, source = load_recipe(recipe), str(recipe)
    dataclass_types = command_dataclasses(command)
    settings = recipe_settings(config, command, variant, dataclass_types, source)
    if overrides:
        own = _field_names(dataclass_types)
        unknown = [key for key in overrides if key not in own]
        if unknown:
            raise _unknown_keys(unknown, own, f"unknown override(s) for `{command}`")
        settings.update(overrides)
    apply_env(config, source)
    return build_arguments(dataclass_types, settings)
