"""One YAML for the whole pipeline: `trl.TrlParser` with per-command sections.

A recipe is an ordinary TRL config file (keys are the dataclass fields, `env:` sets environment variables), with
four additions so that one file drives `sft`, `train` and `eval` and recipes share their common setup:

* `base: FILE` (a path relative to the recipe's folder) reads FILE first and lays the recipe over it: a key the
  recipe sets wins, and mappings (the sections, `variants:` and each variant, `env:`) are merged key by key, so
  a recipe states only what differs from its base. A base may have a base of its own (cycles are an error).
  Other paths in a recipe (data files, output folders) are relative to the working directory, as in TRL;
* top-level keys are shared; a section named after the command (`sft:`, `train:`, `eval:`, `quickstart:`)
  overrides them for that command;
* `variants:` maps a name to extra keys on top of the `train` section, selected with `--variant NAME` (the
  baselines and ablations of a recipe); `eval --variant NAME` evaluates that variant's `output_dir`;
* a key that belongs to another command only (say `beta` while running `sft`) is ignored; a key that belongs
  to no command is an error, so typos do not pass silently.

Precedence, lowest first: dataclass defaults, the command's defaults (`train`: the paper's `beta: 1.0`), CPU-friendly
defaults (`bf16: false` without a bf16 GPU), shared keys, the command's section, the variant, then command-line
flags.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any


SECTIONS = ("sft", "train", "eval", "sweep", "quickstart")
RESERVED = ("env", "variants", *SECTIONS)
# Command defaults that differ from the dataclasses' (a recipe key or a flag wins): `train` uses the DynamicPO
# paper's beta, while `DynamicPOConfig` keeps `DPOConfig`'s 0.1 so that TRL scripts behave as with TRL.
COMMAND_DEFAULTS = {"train": {"beta": 1.0}}

BASE_KEY = "base"


def pop_option(argv: list[str], name: str) -> str | None:
    """Remove `name VALUE` or `name=VALUE` from `argv` (in place) and return VALUE (None when absent)."""
    for i, arg in enumerate(argv):
        if arg == name:
            if i + 1 >= len(argv):
                raise SystemExit(f"error: {name} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith(name + "="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _read_mapping(path: Path) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(config).__name__}.")
    return config


def merge_recipes(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` laid over `base`: mappings present in both are merged key by key (recursively), any other value
    of `override` replaces the base's."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
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


def stage_config(config: dict[str, Any], stage: str, variant: str | None = None, path: str = "recipe") -> dict:
    """The flat key/value mapping for one command: shared keys, then its section, then the variant."""
    merged = {k: v for k, v in config.items() if k not in RESERVED}
    section = config.get(stage) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{path}: section '{stage}' must be a mapping.")
    merged.update(section)
    if variant is not None:
        if stage not in ("train", "eval"):
            raise ValueError(f"--variant selects a `train` variant (and `eval` of its output); not `{stage}`.")
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
    return {f.name for dc in dataclass_types for f in fields(dc)}


def all_command_fields() -> set[str]:
    """Every key any command accepts (used to tell another command's key from a typo)."""
    from trl import ModelConfig, SFTConfig

    from trl_dynamicpo.config import DynamicPOConfig

    from .arguments import EvalArguments, QuickstartArguments, RecDataArguments
    from .sweep import SweepArguments

    return _field_names(
        (RecDataArguments, EvalArguments, QuickstartArguments, SweepArguments, SFTConfig, DynamicPOConfig, ModelConfig)
    )


def has_accelerator() -> bool:
    """True when torch sees a GPU or another accelerator (CUDA, XPU, MPS, NPU, ...)."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def cpu_defaults(dataclass_types: Sequence[type]) -> dict[str, Any]:
    """Defaults that make the trainer configs right on a machine without an accelerator (a YAML key or flag wins).

    * `use_cpu: true`: without it `transformers` does not set up CPU distributed training, so under `torchrun` /
      `accelerate launch` every process would silently train its own copy (`accelerate launch --cpu` sets it too).
    * `bf16: false`: TRL turns bf16 on by default, which `transformers` rejects on CPU unless `use_cpu`, and which
      is slow there anyway.
    """
    names = _field_names(dataclass_types)
    if "bf16" not in names:
        return {}
    import torch

    if has_accelerator():
        bf16_ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return {} if bf16_ok or not torch.cuda.is_available() else {"bf16": False}
    return {"bf16": False, "use_cpu": True}


def _make_positional(parser, dataclass_types: Sequence[type], names: Sequence[str]) -> None:
    """Turn the fields `names` into positional arguments, in that order (`leak-free SRC DST`)."""
    import argparse

    help_texts = {f.name: f.metadata.get("help") for dc in dataclass_types for f in fields(dc)}
    # TrlParser made each of these a required `--name` option: no longer required, and hidden from the help (on the
    # parser's actions, as TRL's `set_defaults_with_config` edits them), so that the positional form is the one shown.
    parser.set_defaults_with_config(**dict.fromkeys(names))
    for action in parser._actions:
        if action.dest in names and action.option_strings:
            action.help = argparse.SUPPRESS
    for name in names:
        parser.add_argument(name, metavar=name.upper(), help=help_texts[name])


def parse_command(
    stage: str,
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    positional: Sequence[str] = (),
) -> tuple:
    """Parse `argv` (`--config recipe.yaml [--variant NAME] --flag value ...`) into the dataclasses.

    `positional` names fields given as positional arguments instead of `--name VALUE` (the data tools' file
    arguments). Returns one instance per dataclass type, in order.
    """
    from trl import TrlParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = TrlParser(dataclass_types, prog=prog or f"trl-dynamicpo {stage}")
    _make_positional(parser, dataclass_types, positional)
    config_path = pop_option(argv, "--config")
    variant = pop_option(argv, "--variant")
    if variant is not None and config_path is None:
        raise SystemExit("error: --variant needs --config (variants are defined in the recipe)")
    parser.set_defaults_with_config(**cpu_defaults(dataclass_types), **COMMAND_DEFAULTS.get(stage, {}))
    if config_path is not None:
        config = load_recipe(config_path)
        env = config.get("env") or {}
        if not isinstance(env, dict):
            raise ValueError(f"{config_path}: `env` must be a mapping of environment variables.")
        for key, value in env.items():
            os.environ[key] = str(value)
        merged = stage_config(config, stage, variant, str(config_path))
        own = _field_names(dataclass_types)
        known = all_command_fields() | own
        unknown = sorted(k for k in merged if k not in known)
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"{config_path}: unknown key(s) for `trl-dynamicpo {stage}`: {', '.join(hints)}.")
        leftover = parser.set_defaults_with_config(**{k: v for k, v in merged.items() if k in own})
        if leftover:  # cannot happen (all keys are fields), kept as a guard
            raise ValueError(f"{config_path}: keys not consumed by the parser: {leftover}")
    return tuple(parser.parse_args_into_dataclasses(args=argv))
