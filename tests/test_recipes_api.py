"""`trl_dynamicpo.pipeline.resolve_recipe`: a recipe resolved to the command's dataclasses without a command line,
exactly as `trl-dynamicpo <command> --config recipe.yaml --flag value` parses it."""

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from trl_dynamicpo.cli.parsing import parse_command
from trl_dynamicpo.pipeline import command_dataclasses, parse_overrides, resolve_recipe


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _fields(obj) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _same(resolved: tuple, parsed: tuple) -> None:
    assert [type(x) for x in resolved] == [type(x) for x in parsed]
    for a, b in zip(resolved, parsed):
        assert _fields(a) == _fields(b), type(a).__name__


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _recipe(tmp_path: Path) -> dict:
    return {
        "model_name_or_path": "base-model",
        "num_negatives": 3,
        "learning_rate": 5e-5,
        "sft": {"output_dir": str(tmp_path / "sft"), "learning_rate": 1e-3},
        "train": {"model_name_or_path": str(tmp_path / "sft"), "output_dir": str(tmp_path / "po"), "beta": 1.0},
        "eval": {"model_name_or_path": str(tmp_path / "po"), "batch_size": 4},
        "variants": {"dmpo_plain": {"boundary_selection": False, "dynamic_beta": False, "output_dir": str(tmp_path / "d")}},
    }


@pytest.mark.parametrize(
    ("path", "command", "variant"),
    [
        ("lastfm_sample_cpu.yaml", "sft", None),
        ("lastfm_sample_cpu.yaml", "train", None),
        ("lastfm_sample_cpu.yaml", "train", "dmpo_plain"),
        ("lastfm_sample_cpu.yaml", "eval", "dmpo_plain"),
        ("lastfm/llama3_8b_qlora.yaml", "sft", None),
        ("lastfm/llama3_8b_qlora.yaml", "train", "sdpo_plain"),
        ("lastfm/llama3_8b_qlora.yaml", "eval", None),
        ("quickstart_cpu.yaml", "quickstart", None),
    ],
)
def test_resolve_recipe_is_what_the_command_line_parses(path, command, variant):
    recipe = RECIPES / path
    overrides = {"bf16": False} if command in ("sft", "train") else {}  # the paper recipes' bf16 needs a GPU
    flags = [f"--{key}={str(value).lower()}" for key, value in overrides.items()]
    parsed = parse_command(command, argv=["--config", str(recipe), *(["--variant", variant] if variant else []), *flags])
    _same(resolve_recipe(recipe, command, variant, overrides), parsed)


def test_precedence_section_variant_then_overrides(tmp_path):
    path = _write(tmp_path / "r.yaml", _recipe(tmp_path))
    data, sft, model = resolve_recipe(path, "sft")
    assert sft.learning_rate == 1e-3 and model.model_name_or_path == "base-model"  # the section over the shared key
    assert data.num_negatives == 3 and not sft.bf16  # shared key; CPU-friendly default
    _, po, model = resolve_recipe(path, "train", "dmpo_plain", overrides={"output_dir": str(tmp_path / "x")})
    assert model.model_name_or_path == str(tmp_path / "sft") and po.learning_rate == 5e-5
    assert not po.boundary_selection and not po.dynamic_beta and po.output_dir == str(tmp_path / "x")
    _, eval_args, model = resolve_recipe(path, "eval", "dmpo_plain")
    assert model.model_name_or_path == str(tmp_path / "d") and eval_args.output_dir is None and eval_args.batch_size == 4
    # A loaded mapping works as a file does.
    _same(resolve_recipe(_recipe(tmp_path), "train"), resolve_recipe(path, "train"))


def test_strings_are_converted_as_flags_are(tmp_path):
    recipe = {"learning_rate": "1e-4", "max_steps": "5", "gradient_checkpointing": "false", "num_negatives": "-1",
              "output_dir": str(tmp_path)}  # fmt: skip
    path = _write(tmp_path / "r.yaml", recipe)
    data, args, _ = resolve_recipe(path, "train")
    assert args.learning_rate == 1e-4 and args.max_steps == 5 and args.gradient_checkpointing is False
    assert data.num_negatives is None  # -1: every non-target candidate
    _same((data, args), parse_command("train", argv=["--config", str(path)])[:2])
    with pytest.raises(ValueError, match=r"max_steps='many' is not a valid int"):
        resolve_recipe({**recipe, "max_steps": "many"}, "train")


def test_unknown_keys_are_errors_with_a_hint(tmp_path):
    recipe = {"model_name_or_path": "x", "beta": 0.5}  # `beta` belongs to `train`: ignored by `sft`
    assert resolve_recipe(recipe, "sft")[2].model_name_or_path == "x"
    with pytest.raises(ValueError, match="unknown key.*'learnig_rate' \\(did you mean 'learning_rate'\\?\\)"):
        resolve_recipe({**recipe, "learnig_rate": 1e-4}, "sft")
    with pytest.raises(ValueError, match="unknown override.*'beta'"):  # an override must be the command's own key
        resolve_recipe(recipe, "sft", overrides={"beta": 0.5})
    with pytest.raises(ValueError, match="no variant 'dmpo_plain'"):
        resolve_recipe(recipe, "train", "dmpo_plain")
    with pytest.raises(ValueError, match="No recipe command 'leak-free'"):
        command_dataclasses("leak-free")
    with pytest.raises(ValueError, match="base"):
        resolve_recipe({"base": "other.yaml"}, "sft")


def test_env_is_applied(tmp_path, monkeypatch):
    monkeypatch.delenv("TRL_DYNAMICPO_TEST_ENV", raising=False)
    resolve_recipe({"env": {"TRL_DYNAMICPO_TEST_ENV": 3}}, "eval")
    assert os.environ["TRL_DYNAMICPO_TEST_ENV"] == "3"


def test_parse_overrides_reads_values_as_yaml():
    assert parse_overrides(["learning_rate=1e-4", "beta=0.5", "loss_type=[sigmoid, sft]", "x=a=b", "y="]) == {
        "learning_rate": "1e-4", "beta": 0.5, "loss_type": ["sigmoid", "sft"], "x": "a=b", "y": None,
    }  # fmt: skip
    for bad in ("learning_rate", "=1"):
        with pytest.raises(ValueError, match="is not KEY=VALUE"):
            parse_overrides([bad])
    # The YAML string "1e-4" still sets a float field.
    assert resolve_recipe({}, "train", overrides=parse_overrides(["learning_rate=1e-4"]))[1].learning_rate == 1e-4



def test_drop_invalid_rows_is_one_key_for_the_data_and_the_config(tmp_path, capsys):
    """`train` holds `drop_invalid_rows` twice (`RecDataArguments`: the files' rows; `DynamicPOConfig`: the
    preference rows): one recipe key, one flag, both set."""
    path = _write(tmp_path / "r.yaml", {"output_dir": str(tmp_path), "drop_invalid_rows": True})
    for data, config, _ in (resolve_recipe(path, "train"), parse_command("train", argv=["--config", str(path)])):
        assert data.drop_invalid_rows is True and config.drop_invalid_rows is True
    data, config, _ = parse_command("train", argv=["--output_dir", str(tmp_path), "--drop_invalid_rows", "true"])
    assert data.drop_invalid_rows is True and config.drop_invalid_rows is True
    data, config, _ = parse_command("train", argv=["--output_dir", str(tmp_path)])
    assert data.drop_invalid_rows is False and config.drop_invalid_rows is False
    assert resolve_recipe({}, "sft", overrides={"drop_invalid_rows": True})[0].drop_invalid_rows is True
    with pytest.raises(SystemExit):
        parse_command("train", argv=["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.count("--drop-invalid-rows") == 1  # one option (the alias is listed once per option)
    assert "malformed rows of the data files" in help_text and "certainly data bugs" in help_text
