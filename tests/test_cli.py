"""The `trl-dynamicpo` command line: sft -> train -> eval end to end in real subprocesses, and the parser rules.

The pipeline runs once per module (`pipeline`); each `test_pipeline_*` checks one property of that run.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


REPO = Path(__file__).resolve().parents[1]
EVAL_SAMPLES = 8


def tiny_recipe(base, out: Path) -> dict:
    return {
        "model_name_or_path": str(base),
        "max_train_samples": 16,
        "max_eval_samples": EVAL_SAMPLES,
        "num_negatives": 3,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "sft": {"output_dir": str(out / "sft"), "max_steps": 2, "learning_rate": 1e-3},
        "train": {
            "model_name_or_path": str(out / "sft"),
            "output_dir": str(out / "dynamicpo"),
            "max_steps": 2,
            "learning_rate": 1e-3,
            "beta": 1.0,
            "report_to": "tensorboard",
            "eval_strategy": "steps",
            "eval_steps": 2,
            "rank_eval_samples": 4,
        },
        "eval": {"model_name_or_path": str(out / "dynamicpo"), "batch_size": 8, "max_new_tokens": 4},
        "variants": {
            "dmpo_plain": {"boundary_selection": False, "dynamic_beta": False, "output_dir": str(out / "dmpo")}
        },
    }


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run_cli(*args, timeout=300):
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(list(args), capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


@pytest.fixture(scope="module")
def pipeline(slice_data, tmp_path_factory):
    """sft -> train -> eval through the real entry points, once: a YAML recipe (the slice's files and model) and a
    flag that overrides it (`--beta 0.5` on `train`)."""
    out = tmp_path_factory.mktemp("pipeline")
    recipe = tiny_recipe(slice_data["model_name_or_path"], out)
    recipe.update({key: value for key, value in slice_data.items() if key != "model_name_or_path"})
    config = write_yaml(out / "recipe.yaml", recipe)
    console = shutil.which("trl-dynamicpo")
    run_cli(*([console] if console else [sys.executable, "-m", "trl_dynamicpo"]), "sft", "--config", str(config))
    run_cli(sys.executable, "-m", "trl_dynamicpo", "train", "--config", str(config), "--beta", "0.5")
    evaluation = run_cli(sys.executable, "-m", "trl_dynamicpo", "eval", "--config", str(config), "--protocol", "both")
    dpo = out / "dynamicpo"
    return {
        "sft": out / "sft",
        "dynamicpo": dpo,
        "record": json.loads((dpo / "trl_dynamicpo_run.json").read_text()),
        "history": json.loads((dpo / "trainer_state.json").read_text())["log_history"],
        "metrics": json.loads((dpo / "eval" / "metrics.json").read_text()),
        "eval_stdout": evaluation.stdout,
    }


@pytest.mark.slow
def test_pipeline_sft_saves_model_tokenizer_card_and_record(pipeline):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "trainer_state.json"):
        assert (pipeline["sft"] / name).exists(), name
    record = json.loads((pipeline["sft"] / "trl_dynamicpo_run.json").read_text())
    assert record["command"] == "sft" and record["training"]["max_steps"] == 2


@pytest.mark.slow
def test_pipeline_flag_overrides_the_recipe_section(pipeline):
    training = pipeline["record"]["training"]
    assert training["beta"] == 0.5  # the flag, over the section's `beta: 1.0`
    assert training["learning_rate"] == 1e-3 and training["max_steps"] == 2  # the section, over the defaults


@pytest.mark.slow
def test_pipeline_train_record_names_method_data_and_handoff(pipeline):
    record = pipeline["record"]
    assert record["method"] == "DynamicPO (DMPO)"
    assert record["data"]["num_negatives"] == 3 and record["data"]["candidates"] == "leak_free"
    assert "policy and reference" in record["handoff"]


@pytest.mark.slow
def test_pipeline_model_card_names_the_method(pipeline):
    card = (pipeline["dynamicpo"] / "README.md").read_text()
    assert "DynamicPO" in card and "dynamicpo" in card


@pytest.mark.slow
def test_pipeline_first_loss_is_log_2(pipeline):
    """The policy starts as the reference, so every log-ratio is 0 at the first step and the DMPO loss is log 2."""
    losses = [row["loss"] for row in pipeline["history"] if "loss" in row]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)


@pytest.mark.slow
def test_pipeline_logs_dynamicpo_eval_and_ranking_metrics(pipeline):
    history = pipeline["history"]
    assert any("dynamicpo/boundary_negatives" in row for row in history)
    assert any("eval_loss" in row for row in history)
    assert any("eval_rank_ndcg@5" in row for row in history)  # rank_eval_samples: the RecEvalCallback


@pytest.mark.slow
def test_pipeline_report_to_tensorboard_writes_events(pipeline):
    assert list(pipeline["dynamicpo"].rglob("events.out.tfevents.*")), "report_to=tensorboard wrote no event file"


@pytest.mark.slow
def test_pipeline_eval_reports_both_protocols_on_the_eval_split(pipeline):
    metrics = pipeline["metrics"]
    assert metrics["n"] == EVAL_SAMPLES and metrics["candidates"] == "leak_free" and metrics["split"] == "eval"
    ranking, generation = metrics["ranking"], metrics["generation"]
    assert ranking["n"] == generation["n"] == EVAL_SAMPLES
    for key in ("hr@1", "hr@5", "ndcg@5", "mrr"):
        assert 0.0 <= ranking[key] <= 1.0
    assert ranking["hr@1"] <= ranking["hr@5"] and ranking["mrr"] >= 1 / 20
    assert 0.0 <= generation["hr@1"] <= generation["valid_ratio"] <= 1.0


@pytest.mark.slow
def test_pipeline_eval_reports_baselines_and_leak_check(pipeline):
    metrics = pipeline["metrics"]
    assert set(metrics["baselines"]) >= {"random", "popularity"} and "hit_rate" in metrics["leak_check"]
    assert "baselines" not in metrics["ranking"] and "baselines" not in metrics["generation"]


@pytest.mark.slow
def test_pipeline_eval_writes_predictions_in_prompt_order(pipeline):
    for protocol in ("ranking", "generation"):
        lines = (pipeline["dynamicpo"] / "eval" / protocol / "predictions.jsonl").read_text().splitlines()
        assert [json.loads(line)["index"] for line in lines] == list(range(EVAL_SAMPLES)), protocol


@pytest.mark.slow
def test_pipeline_eval_prints_a_summary(pipeline):
    assert "ranking     HR@1" in pipeline["eval_stdout"] and "generation  HR@1" in pipeline["eval_stdout"]


def test_help_and_version(capsys):
    from trl_dynamicpo.cli.main import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("sft", "train", "eval", "quickstart", "leak-free", "leak-check"):
        assert command in out
    assert main(["--version"]) == 0
    assert main(["no-such-command"]) == 2


# One option each command must list in its --help (commands added later are checked for a usage line at least).
HELP_OPTIONS = {
    "sft": "--learning_rate", "train": "--beta", "eval": "--protocol", "sweep": "--train_overrides",
    "quickstart": "--tiny", "leak-free": "--num_candidates", "leak-check": "--similarity",
}  # fmt: skip


def _commands():
    from trl_dynamicpo.cli.main import COMMANDS

    return list(COMMANDS)


@pytest.mark.parametrize("command", _commands())
def test_help_alone_prints_the_options_and_exits_0(command, capsys):
    """`trl-dynamicpo <command> --help` needs no other flag (`sweep` used to ask for --config first)."""
    from trl_dynamicpo.cli.main import main

    try:
        code = main([command, "--help"])
    except SystemExit as exit_info:  # argparse's --help exits; a command with subcommands may return instead
        code = exit_info.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert out.startswith("usage: trl-dynamicpo") and HELP_OPTIONS.get(command, "usage") in out


def test_yaml_sections_variants_and_flags(tmp_path):
    from trl_dynamicpo.cli.parsing import parse_command
    from trl_dynamicpo.variants import method_name

    config = write_yaml(tmp_path / "r.yaml", {**tiny_recipe("base-path", tmp_path), "learning_rate": 5e-5})
    data, args, model = parse_command("sft", argv=["--config", str(config)])
    assert model.model_name_or_path == "base-path" and args.learning_rate == 1e-3 and not args.bf16
    assert data.num_negatives == 3 and data.candidates == "leak_free"
    data, args, model = parse_command("train", argv=["--config", str(config), "--max_steps", "7"])
    assert model.model_name_or_path == str(tmp_path / "sft") and args.max_steps == 7 and args.beta == 1.0
    assert args.boundary_selection and args.dynamic_beta
    data, args, model = parse_command("train", argv=["--config", str(config), "--variant", "dmpo_plain"])
    assert not args.boundary_selection and not args.dynamic_beta and args.output_dir == str(tmp_path / "dmpo")
    assert method_name(args) == "DMPO"
    _, eval_args, model = parse_command("eval", argv=["--config", str(config), "--variant=dmpo_plain"])
    assert model.model_name_or_path == str(tmp_path / "dmpo") and eval_args.output_dir is None
    # num_negatives -1 means every non-target candidate.
    data, *_ = parse_command("train", argv=["--config", str(config), "--num_negatives", "-1"])
    assert data.num_negatives is None


def test_unknown_key_is_an_error(tmp_path):
    from trl_dynamicpo.cli.parsing import parse_command

    config = write_yaml(tmp_path / "r.yaml", {"model_name_or_path": "x", "learnig_rate": 1e-4})
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        parse_command("sft", argv=["--config", str(config)])
    config = write_yaml(tmp_path / "v.yaml", {"model_name_or_path": "x"})
    with pytest.raises(ValueError, match="no variant"):
        parse_command("train", argv=["--config", str(config), "--variant", "dmpo_plain"])


def test_leak_tools_are_wired(tmp_path, capsys):
    from trl_dynamicpo.cli.main import main
    from trl_dynamicpo.recsys import read_examples, sample_path

    dst = tmp_path / "val.leak_free.jsonl"
    assert main(["leak-free", str(sample_path("val")), str(dst), "--catalogue", str(sample_path("items"))]) == 0
    rebuilt = read_examples(dst)
    assert len(rebuilt) == 300 and all(len(ex.candidates) == 20 for ex in rebuilt)
    assert main(["leak-check", str(sample_path("train")), str(dst), "--output", str(tmp_path / "leak.json")]) == 0
    result = json.loads((tmp_path / "leak.json").read_text())
    assert result["n"] == 300 and result["hit_rate"] < 0.2


@pytest.mark.slow
def test_leak_tools_import_no_torch():
    """The data tools parse with the commands' parser (positional files, options anywhere) yet load no torch."""
    from trl_dynamicpo.recsys import sample_path

    code = ("import sys; from trl_dynamicpo.cli.main import main; "
            f"main(['leak-check', {str(sample_path('train'))!r}, '--seed', '1', {str(sample_path('val'))!r}]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")  # fmt: skip
    run_cli(sys.executable, "-c", code)




def test_python_dash_m_is_the_console_script(monkeypatch, capsys):
    """`python -m trl_dynamicpo` (the form `accelerate launch -m` and `torchrun -m` use) runs the same entry point."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["trl_dynamicpo", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("trl_dynamicpo", run_name="__main__")
    assert done.value.code == 0 and "usage: trl-dynamicpo <command>" in capsys.readouterr().out
