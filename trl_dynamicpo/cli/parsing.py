"""The commands' parser: `trl.TrlParser` over a command's dataclasses, with a recipe's settings as its defaults.

`--config recipe.yaml` reads a recipe (`trl_dynamicpo.pipeline.recipes` describes the format: `base:`, sections,
`variants:`, `env:`), `--variant NAME` selects one of its variants, and every other flag sets one field, over the
recipe. Parsing `--config recipe.yaml --flag value` gives what `resolve_recipe(recipe, command, variant,
overrides={"flag": value})` gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from ..pipeline.recipes import apply_env, command_dataclasses, load_recipe, recipe_settings


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


def _make_positional(parser, dataclass_types: Sequence[type], names: Sequence[str]) -> None:
    """Turn the fields `names` into positional arguments, in that order (`leak-free SRC DST`)."""
    help_texts = {f.name: f.metadata.get("help") for dc in dataclass_types for f in dataclasses.fields(dc)}
    # TrlParser made each of these a required `--name` option: no longer required, and hidden from the help (on the
    # parser's actions, as TRL's `set_defaults_with_config` edits them), so that the positional form is the one shown.
    parser.set_defaults_with_config(**dict.fromkeys(names))
    for action in parser._actions:
        if action.dest in names and action.option_strings:
            action.help = argparse.SUPPRESS
    for name in names:
        parser.add_argument(name, metavar=name.upper(), help=help_texts[name])


def _shared_fields(dataclass_types: Sequence[type]) -> dict[str, int]:
    """Fields that several of the dataclasses hold, each with the index of the last one holding it (its owner)."""
    owners: dict[str, list[int]] = {}
    for i, dc in enumerate(dataclass_types):
        for f in dataclasses.fields(dc):
            if f.init:
                owners.setdefault(f.name, []).append(i)
    return {name: holders[-1] for name, holders in owners.items() if len(holders) > 1}


def _without_options(dc: type, names: set[str]) -> type:
    """`dc` with the fields `names` out of the parser (`init=False`, so `HfArgumentParser` adds no option)."""
    redefined = []
    for f in dataclasses.fields(dc):
        if f.name in names:
            default = {"default": f.default} if f.default is not dataclasses.MISSING else {}
            if f.default_factory is not dataclasses.MISSING:
                default = {"default_factory": f.default_factory}
            redefined.append((f.name, f.type, dataclasses.field(init=False, metadata=f.metadata, **default)))
    return dataclasses.make_dataclass(dc.__name__, redefined, bases=(dc,), namespace={"__module__": dc.__module__})


def parse_command(
    command: str,
    dataclass_types: Sequence[type] | None = None,
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    positional: Sequence[str] = (),
) -> tuple:
    """Parse `argv` (`--config recipe.yaml [--variant NAME] --flag value ...`) into the command's dataclasses.

    `dataclass_types` defaults to `trl_dynamicpo.pipeline.command_dataclasses(command)`. `positional` names fields
    given as positional arguments instead of `--name VALUE` (the data tools' file arguments). A field that two of
    the dataclasses share (`train`'s `drop_invalid_rows`) is one flag, which sets both. Returns one instance per
    dataclass type, in order.
    """
    from trl import TrlParser

    dataclass_types = tuple(command_dataclasses(command) if dataclass_types is None else dataclass_types)
    argv = list(sys.argv[1:] if argv is None else argv)
    shared = _shared_fields(dataclass_types)
    # HfArgumentParser refuses two options of one name: the shared field is an option of its owner only.
    parser_types = []
    for i, dc in enumerate(dataclass_types):
        others = {name for name, owner in shared.items() if owner != i and name in dc.__dataclass_fields__}
        parser_types.append(_without_options(dc, others) if others else dc)
    parser = TrlParser(parser_types, prog=prog or f"trl-dynamicpo {command}")
    for action in parser._actions:  # the one option of a shared field says what it sets in each dataclass
        if action.dest in shared and action.option_strings:
            texts = [f.metadata.get("help") for dc in dataclass_types for f in dataclasses.fields(dc) if f.name == action.dest]
            action.help = " ".join(dict.fromkeys(text for text in texts if text))
    _make_positional(parser, dataclass_types, positional)
    config_path = pop_option(argv, "--config")
    variant = pop_option(argv, "--variant")
    if variant is not None and config_path is None:
        raise SystemExit("error: --variant needs --config (variants are defined in the recipe)")
    recipe = None
    if config_path is not None:
        recipe = load_recipe(config_path)
        apply_env(recipe, config_path)
    parser.set_defaults_with_config(**recipe_settings(recipe, command, variant, dataclass_types, str(config_path)))
    parsed = parser.parse_args_into_dataclasses(args=argv)
    out = []
    for dc, obj in zip(dataclass_types, parsed):
        if type(obj) is not dc:  # a parser type without the shared fields: the full dataclass, with its owner's values
            values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(dc) if f.init and f.name not in shared}
            values.update({n: getattr(parsed[owner], n) for n, owner in shared.items() if n in dc.__dataclass_fields__})
            obj = dc(**values)
        out.append(obj)
    return tuple(out)
