"""`trl-dynamicpo train --negatives hard`: the rejected completions are the K candidates the starting model ranks
highest, checked against the ranking evaluation's own scores of the same model."""

import json

import pytest


def _train_with_negatives(slice_data, tmp_path, mode: str, prompts: int, k: int):
    """`trl-dynamicpo train --negatives MODE` for one step on the slice; returns the args and the trainer."""
    from trl_dynamicpo.cli.parsing import parse_command
    from trl_dynamicpo.pipeline import run_train

    flags = ["--model_name_or_path", slice_data["model_name_or_path"], "--train_file", slice_data["train_file"],
             "--eval_file", slice_data["eval_file"], "--items_file", slice_data["items_file"],
             "--max_train_samples", str(prompts), "--num_negatives", str(k), "--negatives", mode, "--max_steps", "1",
             "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "out"), "--report_to", "none",
             "--save_strategy", "no", "--disable_tqdm", "true", "--gradient_checkpointing", "false"]  # fmt: skip
    data_args, training_args, model_args = parse_command("train", argv=flags)
    return data_args, run_train(data_args, training_args, model_args)


@pytest.mark.slow
def test_hard_negatives_are_the_starting_models_top_ranked_wrong_candidates(slice_data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_dynamicpo.pipeline import load_rec_data, prompt_builder
    from trl_dynamicpo.recsys import evaluate_ranking

    data_args, trainer = _train_with_negatives(slice_data, tmp_path, "hard", prompts=6, k=3)

    examples = load_rec_data(data_args, need=("train",)).train
    model = AutoModelForCausalLM.from_pretrained(slice_data["model_name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(slice_data["model_name_or_path"])
    evaluate_ranking(model, tokenizer, examples, prompt_builder(data_args), output_dir=tmp_path / "rank",
                     show_progress=False)  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "rank" / "predictions.jsonl").read_text().splitlines()]
    for row, rejected in zip(rows, trainer.train_dataset["rejected"]):
        wrong = [(s, c) for s, c in zip(row["scores"], row["candidates"]) if c != row["target"]]
        top = [c for _, c in sorted(wrong, key=lambda sc: -sc[0])[:3]]
        assert [r.strip() for r in rejected] == top


@pytest.mark.slow
def test_generated_negatives_are_the_starting_models_own_wrong_answers(slice_data, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_dynamicpo.pipeline import load_rec_data, prompt_builder

    data_args, trainer = _train_with_negatives(slice_data, tmp_path, "generated", prompts=4, k=2)

    # Slow reference: one prompt at a time, no padding, 3 beams; the 2 best answers that are not the target.
    examples = load_rec_data(data_args, need=("train",)).train
    builder = prompt_builder(data_args)
    model = AutoModelForCausalLM.from_pretrained(slice_data["model_name_or_path"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(slice_data["model_name_or_path"])
    for i, (ex, rejected) in enumerate(zip(examples, trainer.train_dataset["rejected"])):
        ids = torch.tensor([tokenizer(builder.build(ex, i))["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=20, num_beams=3, num_return_sequences=3, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
        answers = [tokenizer.decode(o[ids.size(1):], skip_special_tokens=True).strip() for o in out]
        expected = [a for a in dict.fromkeys(answers) if a and a != ex.target][:2]
        assert [r.strip() for r in rejected][: len(expected)] == expected


def test_negative_modes_are_checked():
    from trl_dynamicpo.cli.parsing import parse_command
    from trl_dynamicpo.pipeline import RecDataArguments

    with pytest.raises(SystemExit):
        parse_command("train", (RecDataArguments,), ["--negatives", "hardest"])
