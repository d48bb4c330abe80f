"""Every paper recipe runs: recipes/<dataset>/<model>_qlora.yaml through `sft` -> `train` -> `eval` on CPU.

Each recipe is run through a recipe that names it as its `base:` and overrides only

- the model: one tiny Llama-shaped model with every item one token (`build_recommender_lm`), shared by the six
  recipes, 64 wide so that bitsandbytes' 4-bit layers work on CPU (tests/test_qlora.py);
- the sizes: 2 optimizer steps of batch 2 without gradient accumulation;
- the data: 30 prompts per split, written by `trl-dynamicpo data build` from generated raw LLaRA files into
  `data/<dataset>/` of the working directory, the folder each recipe names.

Every other key is the recipe's: 4-bit NF4 with LoRA on all linear layers, `dtype: bfloat16` and `bf16: true` (the
CLI sets `use_cpu` without an accelerator, and transformers then trains in bf16 on CPU), gradient checkpointing,
`optim: paged_adamw_32bit` (bitsandbytes has no paged memory on CPU and falls back to its non-paged 32-bit AdamW with
a warning, so nothing needs overriding), tensorboard logging, the cosine schedule, both evaluation protocols. The
run records of `sft` and `train` are checked to hold every key of the resolved recipe with the recipe's value, and
`eval` to have read the test split that `data build` wrote.
"""

import json
import random
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import yaml

from trl_dynamicpo.cli.main import main
from trl_dynamicpo.pipeline import load_recipe, stage_config


pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PAPER = sorted(RECIPES.glob("*/*_qlora.yaml"))
ITEMS = [f"Item {i}" for i in range(40)]
PROMPTS = 30  # per split, after data build drops the rows with fewer than 3 history items
# How each dataset's raw files look (LLaRA's padding ids and name rules) and the `data build` arguments for them.
RAW = {
    "lastfm": {"padding": 4606, "names": ITEMS, "build": ["lastfm"]},
    "steam": {"padding": 3581, "names": [f"{name} :: Deluxe Edition" for name in ITEMS], "build": ["steam"]},
    "goodreads": {
        "padding": 4550,
        "names": [f"{name} (Series, #{i})" for i, name in enumerate(ITEMS)],
        "build": ["llara", "--padding_id", "4550", "--catalogue", "id2name.txt", "--name_rule", "goodreads"],
    },
}
SIZES = {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1}


def _raw_rows(padding: int, seed: int) -> list[dict]:
    """LLaRA-style rows: 2 too short to keep, then PROMPTS with 3 to 10 history items, padded to 10."""
    rng = random.Random(seed)
    rows = []
    for i in range(PROMPTS + 2):
        real = i + 1 if i < 2 else 3 + i % 8
        items = rng.sample(range(len(ITEMS)), real + 1)
        rows.append({"seq": items[:real] + [padding] * (10 - real), "len_seq": real, "next": items[real]})
    return rows


def _write_raw(folder: Path, spec: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "id2name.txt").write_text("".join(f"{i}::{n}\n" for i, n in enumerate(spec["names"])), encoding="utf-8")
    for seed, name in enumerate(("train_data.df", "Val_data.df", "Test_data.df")):
        frame = pd.DataFrame(_raw_rows(spec["padding"], seed), columns=["seq", "len_seq", "next"])
        frame.columns = pd.Index(list(frame.columns), dtype=object)  # as in LLaRA's pickles
        frame.to_pickle(folder / name)


@pytest.fixture(scope="module")
def workspace(four_bit, tmp_path_factory):
    """A working directory with data/<dataset>/ built by `data build` for the three datasets, and the tiny model."""
    from trl_dynamicpo.recsys import PromptBuilder, read_examples
    from trl_dynamicpo.tiny import build_recommender_lm

    root = tmp_path_factory.mktemp("paper-recipes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for dataset, spec in RAW.items():
            _write_raw(Path("raw") / dataset, spec)
            # The generated files are not LLaRA's published LastFM files, whose sha256 the build checks by default.
            build = [*spec["build"], "--raw", f"raw/{dataset}", "--out", f"data/{dataset}", "--no_check_published"]
            assert main(["data", "build", *build]) == 0
        texts = []
        for dataset, domain in (("lastfm", "music"), ("steam", "games"), ("goodreads", "books")):
            texts += PromptBuilder(domain).training_texts(read_examples(f"data/{dataset}/train.jsonl.gz"))
    build_recommender_lm(texts, ITEMS, vocab_size=300, hidden_size=64, num_layers=1, output_dir=root / "tiny")
    return root


def _same(recorded, wanted) -> bool:
    """Equal up to the one-element lists that the configs turn into strings (`report_to`, `lora_target_modules`)."""

    def flat(value):
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    return flat(recorded) == flat(wanted)


def _check_record(folder: Path, command: str, settings: dict) -> dict:
    from trl_dynamicpo.pipeline import command_dataclasses

    record = json.loads((folder / "trl_dynamicpo_run.json").read_text(encoding="utf-8"))
    assert record["command"] == command
    dataclass_types = command_dataclasses(command)
    own = {f.name for dc in dataclass_types for f in fields(dc)}
    assert not set(settings) - own, f"{command} ignores recipe keys {sorted(set(settings) - own)}"
    recorded = {**record["data"], **record["model"], **record["training"]}
    for key, value in settings.items():
        assert _same(recorded[key], value), f"{command}: {key} is {recorded[key]!r}, the recipe says {value!r}"
    return record


@pytest.mark.parametrize("path", PAPER, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_recipe_runs_sft_train_eval(workspace, path, monkeypatch):
    monkeypatch.chdir(workspace)
    dataset = path.parent.name
    overlay = workspace / f"{dataset}-{path.stem}.yaml"
    overlay.write_text(yaml.safe_dump({"base": str(path), "model_name_or_path": str(workspace / "tiny"), **SIZES}))
    recipe = load_recipe(overlay)
    env = recipe.get("env") or {}
    for name in env:
        monkeypatch.setenv(name, str(env[name]))  # restored after the test (the commands set them from the recipe)
    for command in ("sft", "train", "eval"):
        assert main([command, "--config", str(overlay)]) == 0, command

    sft_settings, train_settings = stage_config(recipe, "sft"), stage_config(recipe, "train")
    sft_record = _check_record(Path(sft_settings["output_dir"]), "sft", sft_settings)
    _check_record(Path(train_settings["output_dir"]), "train", train_settings)
    # The files the recipe names are those `data build` wrote.
    manifest = json.loads((workspace / "data" / dataset / "manifest.json").read_text(encoding="utf-8"))
    for key, split in (("train_file", "train"), ("eval_file", "valid"), ("test_file", "test")):
        assert Path(sft_record["data"][key]) == Path("data", dataset, manifest["splits"][split]["output"])
        assert manifest["splits"][split]["rows_written"] == PROMPTS
    assert Path(sft_record["data"]["items_file"]) == Path("data", dataset, manifest["items"]["file"])
    metrics = json.loads((Path(train_settings["output_dir"]) / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["split"] == "test" and metrics["candidates"] == "leak_free" and metrics["dataset"] == dataset
    assert metrics["ranking"]["n"] == metrics["generation"]["n"] == PROMPTS
