"""Every file under recipes/ parses (YAML; `resolve_recipe` for the training recipes; accelerate's loader for the
accelerate configs), names the command that runs it, and is listed in recipes/README.md; recipes built on a
`base:` resolve to the settings recorded in tests/data/resolved_recipes.json."""

import json
import re
from pathlib import Path

import pytest
import yaml

from trl_dynamicpo.pipeline import load_recipe, resolve_recipe
from trl_dynamicpo.variants import OBJECTIVE_NAMES, VARIANTS


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RESOLVED = Path(__file__).resolve().parent / "data" / "resolved_recipes.json"
ACCELERATE = sorted((RECIPES / "accelerate").glob("*.yaml"))
BASES = sorted(RECIPES.rglob("*_base.yaml"))  # shared setups, named by `base:`, not run on their own
TRAINING = sorted(p for p in RECIPES.rglob("*.yaml") if p.parent.name != "accelerate" and p not in BASES)
PAPER = sorted(RECIPES.glob("*/*_qlora.yaml"))
REQUIRED_ACCELERATE = {"single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "fsdp2", "multi_node"}


def _rel(path: Path) -> str:
    return path.relative_to(RECIPES.parent).as_posix()


def _header(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.startswith("#"))


def test_recipe_set_is_complete():
    assert {p.stem for p in ACCELERATE} == REQUIRED_ACCELERATE
    combos = {(p.parent.name, p.stem) for p in PAPER}
    for dataset in ("lastfm", "goodreads", "steam"):
        for model in ("llama3_8b_qlora", "qwen2.5_7b_qlora"):
            assert (dataset, model) in combos
    assert (RECIPES / "quickstart_cpu.yaml").exists()
    readme = (RECIPES / "README.md").read_text(encoding="utf-8")
    for path in [*ACCELERATE, *TRAINING, *BASES]:
        assert path.relative_to(RECIPES).as_posix() in readme, f"{path} is missing from recipes/README.md"


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_config(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.mixed_precision == "bf16"
    header = _header(path)
    assert f"accelerate launch --config_file {_rel(path)}" in header and "-m trl_dynamicpo" in header


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: _rel(p))
def test_training_recipe_parses(path):
    from trl_dynamicpo.pipeline import QuickstartArguments
    from trl_dynamicpo.pipeline.quickstart import SIZES, _size

    recipe = load_recipe(path)
    header = _header(path)
    cpu = {"bf16": False}  # the paper recipes use bf16, which a CPU rejects
    if "quickstart" in recipe:
        assert f"trl-dynamicpo quickstart --config {_rel(path)}" in header
        (qargs,) = resolve_recipe(path, "quickstart")
        # The file spells out the quickstart's (full-size) defaults: keep them in sync.
        defaults = QuickstartArguments()
        for key, value in recipe["quickstart"].items():
            default = _size(defaults, key) if key in SIZES else getattr(defaults, key)
            assert getattr(qargs, key) == value == default, key
        return
    for command in ("sft", "train", "eval"):
        assert f"trl_dynamicpo {command} --config {_rel(path)}" in header or (
            f"trl-dynamicpo {command} --config {_rel(path)}" in header
        ), f"{path}: no `{command}` command in the header"
    data, sft_args, model = resolve_recipe(path, "sft", overrides=cpu)
    assert sft_args.output_dir and model.model_name_or_path
    data, train_args, model = resolve_recipe(path, "train", overrides=cpu)
    assert model.model_name_or_path == recipe["train"]["model_name_or_path"] == sft_args.output_dir
    assert train_args.boundary_selection and train_args.dynamic_beta
    _, eval_args, eval_model = resolve_recipe(path, "eval")
    assert eval_model.model_name_or_path == train_args.output_dir
    outputs = {train_args.output_dir}
    for variant in recipe.get("variants", {}):
        _, variant_args, _ = resolve_recipe(path, "train", variant, overrides=cpu)
        outputs.add(variant_args.output_dir)
        _, _, variant_model = resolve_recipe(path, "eval", variant)
        assert variant_model.model_name_or_path == variant_args.output_dir
    assert len(outputs) == 1 + len(recipe.get("variants", {})), "variants must not share an output folder"


@pytest.mark.parametrize("path", PAPER, ids=lambda p: _rel(p))
def test_paper_recipe_matches_the_setup(path):
    """docs/method.md, "The paper's setup": 4-bit NF4 + LoRA, bf16 compute, batch 4 x accumulation 8, lr 1e-5,
    cosine, 5% warmup, 3 epochs, beta 1, max grad norm 0.3, paged AdamW 32-bit, cutoff 512; the baselines and
    ablations as variants."""
    recipe = load_recipe(path)
    expected = {
        "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "dtype": "bfloat16", "use_peft": True, "bf16": True,
        "per_device_train_batch_size": 4, "gradient_accumulation_steps": 8, "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05, "num_train_epochs": 3, "max_grad_norm": 0.3, "optim": "paged_adamw_32bit",
        "max_length": 512, "num_candidates": 20,
    }  # fmt: skip
    for key, value in expected.items():
        assert recipe[key] == value, key
    assert recipe["train"]["learning_rate"] == 1e-5 and recipe["train"]["beta"] == 1.0
    assert set(recipe["variants"]) == {
        "dmpo_plain", "sdpo_plain", "mppo_plain", "sdpo_dynamicpo", "mppo_dynamicpo", "dmpo_beta_only",
        "dmpo_selection_only",
    }  # fmt: skip


def test_recipes_resolve_to_their_recorded_settings():
    """Each training recipe, `base:` resolved, holds exactly the settings recorded in the fixture (written from the
    recipes as they were before they shared a base; the variants then took their `<objective>_<variant>` names)."""
    recorded = json.loads(RESOLVED.read_text(encoding="utf-8"))
    assert sorted(recorded) == sorted(p.relative_to(RECIPES).as_posix() for p in TRAINING)
    for name, settings in recorded.items():
        assert load_recipe(RECIPES / name) == settings, name


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: _rel(p))
def test_variant_names_say_what_they_train(path):
    """`--variant <objective>_<variant>` trains that objective with that setting of the two switches."""
    for name in load_recipe(path).get("variants", {}):
        objective, variant = name.split("_", 1)
        _, args, _ = resolve_recipe(path, "train", name, overrides={"bf16": False})
        assert args.multi_negative_loss == objective, name
        assert {k: getattr(args, k) for k in VARIANTS[variant].settings()} == VARIANTS[variant].settings(), name


def test_readme_variant_table_uses_the_vocabulary():
    readme = (RECIPES / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (?:\(none\): )?`(\w+)` \| ([\w-]+) \| (on|off) \| (on|off) \| ([^|]+) \|$", readme, re.M)
    assert len(rows) == 8
    recipe = load_recipe(PAPER[0])
    assert {key for key, *_ in rows} == {*recipe["variants"], "dmpo_dynamicpo"}
    for key, objective_name, selection, beta, method in rows:
        objective, variant = key.split("_", 1)
        assert OBJECTIVE_NAMES[objective] == objective_name
        settings = VARIANTS[variant].settings()
        assert (selection == "on", beta == "on") == (settings["boundary_selection"], settings["dynamic_beta"]), key
        assert method.strip() == VARIANTS[variant].display(objective), key


def test_base_merges_sections_key_by_key_and_detects_cycles(tmp_path):
    (tmp_path / "shared").mkdir()
    base = {"lr": 1, "env": {"A": "1"}, "train": {"beta": 1.0, "max_steps": 5}, "variants": {"v": {"x": 1}}}
    (tmp_path / "shared" / "base.yaml").write_text(yaml.safe_dump(base), encoding="utf-8")
    recipe = {"base": "shared/base.yaml", "lr": 2, "env": {"B": "2"}, "train": {"max_steps": 7},
              "variants": {"v": {"y": 2}, "w": {}}}  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert load_recipe(tmp_path / "recipe.yaml") == {
        "lr": 2, "env": {"A": "1", "B": "2"}, "train": {"beta": 1.0, "max_steps": 7},
        "variants": {"v": {"x": 1, "y": 2}, "w": {}},
    }  # fmt: skip
    # A chain of bases, each path relative to the file that names it.
    (tmp_path / "shared" / "base.yaml").write_text(yaml.safe_dump({**base, "base": "root.yaml"}), encoding="utf-8")
    (tmp_path / "shared" / "root.yaml").write_text(yaml.safe_dump({"seed": 3, "lr": 0}), encoding="utf-8")
    resolved = load_recipe(tmp_path / "recipe.yaml")
    assert resolved["seed"] == 3 and resolved["lr"] == 2 and "base" not in resolved
    (tmp_path / "shared" / "root.yaml").write_text(yaml.safe_dump({"base": "../recipe.yaml"}), encoding="utf-8")
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(tmp_path / "recipe.yaml")
    (tmp_path / "shared" / "base.yaml").write_text(yaml.safe_dump({"base": "missing.yaml"}), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_recipe(tmp_path / "recipe.yaml")
