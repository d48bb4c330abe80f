"""`trl-dynamicpo quickstart --tiny`: the offline demo end to end, in its CI size."""

import json

import pytest
import yaml


@pytest.mark.slow
def test_quickstart_tiny(tmp_path, capsys):
    from trl_dynamicpo.cli.main import main

    out = tmp_path / "qs"
    assert main(["quickstart", "--tiny", "--output_dir", str(out), "--show_progress", "false"]) == 0
    printed = capsys.readouterr().out
    assert "SFT (before)" in printed and "DynamicPO (after)" in printed and "HR@1" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("before", "after"):
        ranking = metrics[stage]["ranking"]
        assert ranking["n"] == metrics["eval_prompts"] == 32
        assert 0.0 <= ranking["hr@1"] <= ranking["hr@5"] <= 1.0 and 0.0 <= ranking["ndcg@5"] <= 1.0
    assert metrics["train_prompts"] == 128 and metrics["candidates"] == "leak_free"
    assert metrics["baselines"]["random"]["n"] == 32
    assert set(metrics["timings_s"]) == {"build", "sft", "eval_before", "dynamicpo", "eval_after", "total"}
    assert (out / "quickstart.png").stat().st_size > 10_000
    # The before/after comparison is paired on the same prompts: wins and losses are recounted from the predictions.
    from trl_dynamicpo.recsys import read_hits

    sft_hits, po_hits = (read_hits(out / f"eval_{name}" / "ranking" / "predictions.jsonl") for name in ("sft", "dynamicpo"))
    paired = metrics["paired_hr@1"]
    assert paired["n"] == 32 and paired["wins"] == sum(p > s for p, s in zip(po_hits, sft_hits))
    assert paired["losses"] == sum(p < s for p, s in zip(po_hits, sft_hits))
    assert abs(paired["diff"] - (metrics["after"]["ranking"]["hr@1"] - metrics["before"]["ranking"]["hr@1"])) < 1e-9
    assert paired["ci_low"] <= paired["diff"] <= paired["ci_high"]
    assert "DynamicPO - SFT, HR@1 on the same prompts" in printed
    for folder in ("base", "sft", "dynamicpo"):
        assert (out / folder / "model.safetensors").exists()
    history = json.loads((out / "dynamicpo" / "trainer_state.json").read_text())["log_history"]
    assert any("dynamicpo/boundary_negatives" in row for row in history)

    # The recipe it wrote is an ordinary CLI recipe for the three stages.
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["train"]["model_name_or_path"] == str(out / "sft")
    assert recipe["eval"]["model_name_or_path"] == str(out / "dynamicpo")
    assert "trl-dynamicpo" in (out / "recipe.yaml").read_text().splitlines()[1]


def test_base_model_shares_input_and_output_embeddings(tmp_path):
    from transformers import AutoModelForCausalLM

    from trl_dynamicpo.recsys import PromptBuilder, load_sample, sample_catalogue
    from trl_dynamicpo.tiny import build_recommender_lm

    texts = PromptBuilder().training_texts(load_sample("train")[:16])
    build_recommender_lm(texts, sample_catalogue(), vocab_size=300, hidden_size=32, num_layers=1, output_dir=tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    untied, _ = build_recommender_lm(texts, sample_catalogue(), vocab_size=300, hidden_size=32, num_layers=1,
                                     tie_embeddings=False)  # fmt: skip
    tied, _ = build_recommender_lm(texts, sample_catalogue(), vocab_size=300, hidden_size=32, num_layers=1)
    assert untied.num_parameters() > tied.num_parameters()


def test_quickstart_recipe_resolves_for_every_stage(tmp_path):
    """The recipe the quickstart writes is an ordinary CLI recipe: each stage resolves to its dataclasses, the stages
    chain (train starts from the SFT output, eval reads the DynamicPO output) and the paper's beta is set."""
    from trl_dynamicpo.pipeline import QuickstartArguments, resolve_recipe
    from trl_dynamicpo.pipeline.quickstart import build_recipe

    recipe = build_recipe(QuickstartArguments(output_dir=str(tmp_path)), tmp_path)
    data, sft, model = resolve_recipe(recipe, "sft")
    assert data.history_loss and data.candidates == "leak_free" and sft.output_dir == str(tmp_path / "sft")
    data, train, model = resolve_recipe(recipe, "train")
    assert model.model_name_or_path == sft.output_dir and train.beta == 1.0 and data.num_negatives == 19
    assert (train.boundary_selection, train.dynamic_beta, train.multi_negative_loss) == (True, True, "dmpo")
    _, evaluation, model = resolve_recipe(recipe, "eval")
    assert model.model_name_or_path == train.output_dir and evaluation.protocol == "ranking"
    tiny = build_recipe(QuickstartArguments(output_dir=str(tmp_path), tiny=True), tmp_path)
    assert tiny["sft"]["max_steps"] == 6 and tiny["max_train_samples"] == 128


def test_quickstart_summary_prints_the_paired_line():
    from pathlib import Path

    from trl_dynamicpo.pipeline.quickstart import summary
    from trl_dynamicpo.sweep.stats import paired_comparison

    ranking = {"hr@1": 0.5, "ndcg@5": 0.6, "hr@5": 0.8}
    paired = paired_comparison([1, 1, 0, 1], [1, 0, 0, 1]).as_dict()
    results = {"before": {"ranking": ranking}, "after": {"ranking": {**ranking, "hr@1": 0.75}}, "paired_hr@1": paired,
               "model": {"parameters": 1e6}, "train_prompts": 4, "eval_prompts": 4, "catalogue_size": 9,
               "baselines": {"popularity": ranking}, "timings_s": {"sft": 1.0, "total": 2.0},
               "recipe": str(Path("out") / "recipe.yaml")}  # fmt: skip
    text = summary(results, None)
    assert "DynamicPO - SFT, HR@1 on the same prompts: +0.250" in text and "(+1/-0" in text
    assert "popularity baseline" in text and "time: 2s" in text
