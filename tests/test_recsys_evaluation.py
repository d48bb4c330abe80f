import json

import pytest
import torch

from trl_dynamicpo.recsys import (
    PromptBuilder,
    RecEvalCallback,
    evaluate_generation,
    evaluate_ranking,
    load_sample,
    parse_answer,
    ranking_metrics,
    sft_dataset,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run fastest on one thread, and far faster than with two threads on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples():
    return load_sample("val")[:4]


@pytest.fixture(scope="module")
def rec_tokenizer(examples):
    from trl_dynamicpo.tiny import build_tokenizer

    builder = PromptBuilder("music")
    texts = [builder.build(ex, i) + " " + ex.target for i, ex in enumerate(load_sample("val")[:40])]
    return build_tokenizer(texts, vocab_size=600)


@pytest.fixture(scope="module")
def rec_model(rec_tokenizer):
    from trl_dynamicpo.tiny import build_tiny_model

    return build_tiny_model(rec_tokenizer, seed=1)


def slow_scores(model, tokenizer, prompt, completions):
    """log pi(completion | prompt), one forward pass per candidate: sum of log-softmax at the completion tokens."""
    scores = []
    for completion in completions:
        if isinstance(prompt, list):
            prompt_ids = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            full_ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        else:
            prompt_ids = tokenizer(prompt)["input_ids"]
            full_ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
        with torch.no_grad():
            logps = model(torch.tensor([full_ids])).logits[0].float().log_softmax(-1)
        scores.append(sum(logps[t - 1, full_ids[t]].item() for t in range(len(prompt_ids), len(full_ids))))
    return scores


@pytest.mark.parametrize("conversational", [False, True])
def test_ranking_equals_per_candidate_scoring(rec_model, rec_tokenizer, examples, tmp_path, conversational):
    builder = PromptBuilder("music", conversational=conversational)
    result = evaluate_ranking(
        rec_model, rec_tokenizer, examples, builder, batch_size=2, output_dir=tmp_path, show_progress=False
    )
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(examples)
    expected = []
    for i, (ex, row) in enumerate(zip(examples, rows)):
        slow = slow_scores(
            rec_model, rec_tokenizer, builder.build(ex, i), [builder.completion(c) for c in ex.candidates]
        )
        assert row["scores"] == pytest.approx(slow, abs=2e-4)
        assert row["target"] == ex.target and row["candidates"] == ex.candidates
        expected.append(slow)
    reference = ranking_metrics(expected, [ex.target_index for ex in examples])
    for key in ("hr@1", "hr@5", "ndcg@5", "mrr"):
        assert result[key] == pytest.approx(reference[key])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["protocol"] == "ranking" and saved["hr@1"] == result["hr@1"]
    assert [row["rank"] for row in rows] == [
        1 + sum(s >= r["scores"][r["target_index"]] for j, s in enumerate(r["scores"]) if j != r["target_index"])
        for r in rows
    ]


def test_ranking_restores_train_mode_and_adds_baselines(rec_model, rec_tokenizer, examples):
    rec_model.train()
    result = evaluate_ranking(
        rec_model, rec_tokenizer, examples[:2], PromptBuilder("music"), show_progress=False,
        train_examples=load_sample("train")[:300],
    )  # fmt: skip
    assert rec_model.training
    rec_model.eval()
    assert set(result["baselines"]) >= {"random", "popularity", "transition"}
    assert set(result["leak_check"]) >= {"hit_rate", "chance", "n"}


def test_ranking_predictions_hold_each_baselines_rank_for_paired_tests(rec_model, rec_tokenizer, examples, tmp_path):
    from trl_dynamicpo.recsys import read_hits
    from trl_dynamicpo.recsys.baselines import baseline_metrics

    train = load_sample("train")[:300]
    result = evaluate_ranking(rec_model, rec_tokenizer, examples, PromptBuilder("music"), show_progress=False,
                              train_examples=train, output_dir=tmp_path)  # fmt: skip
    path = tmp_path / "predictions.jsonl"
    independent = baseline_metrics(train, examples)
    for name, metrics in independent.items():
        hits = read_hits(path, baseline=name)
        assert len(hits) == len(examples) and sum(hits) / len(hits) == pytest.approx(metrics["hr@1"])
        assert result["baselines"][name] == metrics
    assert read_hits(path) == [int(row["rank"] == 1) for row in map(json.loads, path.read_text().splitlines())]
    evaluate_ranking(rec_model, rec_tokenizer, examples, PromptBuilder("music"), show_progress=False,
                     output_dir=tmp_path / "plain")  # fmt: skip
    with pytest.raises(ValueError, match="no per-prompt ranks of the 'cooccurrence' baseline"):
        read_hits(tmp_path / "plain" / "predictions.jsonl", baseline="cooccurrence")


@pytest.mark.parametrize("conversational", [False, True])
def test_generation_matches_unpadded_greedy(rec_model, rec_tokenizer, examples, tmp_path, conversational):
    builder = PromptBuilder("music", conversational=conversational)
    result = evaluate_generation(
        rec_model, rec_tokenizer, examples, builder, batch_size=3, max_new_tokens=6, output_dir=tmp_path,
        show_progress=False,
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    for i, (ex, row) in enumerate(zip(examples, rows)):
        prompt = builder.build(ex, i)
        if conversational:
            ids = rec_tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )["input_ids"]
        else:
            ids = rec_tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = rec_model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                pad_token_id=rec_tokenizer.pad_token_id,
            )  # fmt: skip
        answer = rec_tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert row["answer"] == answer
        assert row["parsed"] == [ex.candidates[j] for j in parse_answer(answer, ex.candidates)]
    valid = sum(len(r["parsed"]) == 1 for r in rows) / len(rows)
    hits = sum(r["parsed"] == [r["target"]] for r in rows) / len(rows)
    assert result == {"hr@1": hits, "valid_ratio": valid, "n": len(examples)}
    assert json.loads((tmp_path / "metrics.json").read_text())["protocol"] == "generation"


def test_callback_logs_rank_metrics_in_trainer(rec_tokenizer, examples, tmp_path):
    from trl import SFTConfig, SFTTrainer

    from trl_dynamicpo.tiny import build_tiny_model

    rec_model = build_tiny_model(rec_tokenizer, seed=2)  # trained here, so not the shared one

    builder = PromptBuilder("music")
    train = sft_dataset(load_sample("train")[:8], builder)
    callback = RecEvalCallback(examples[:3], builder, eval_steps=1, batch_size=3)
    config = SFTConfig(
        output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        eval_strategy="steps", eval_steps=2, logging_steps=1, report_to=[], save_strategy="no", bf16=False,
        learning_rate=1e-3, use_cpu=True,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=rec_model, args=config, train_dataset=train, eval_dataset=train.select(range(4)),
        processing_class=rec_tokenizer, callbacks=[callback],
    )  # fmt: skip
    trainer.train()
    steps = [entry["step"] for entry in callback.history]
    assert steps == [1, 2]
    logged = [entry for entry in trainer.state.log_history if "eval_rank_hr@1" in entry]
    assert {entry["step"] for entry in logged} == {1, 2}
    assert all(0.0 <= entry["eval_rank_mrr"] <= 1.0 for entry in logged)
    metrics = trainer.evaluate()
    assert {"eval_rank_hr@1", "eval_rank_hr@5", "eval_rank_ndcg@5", "eval_rank_mrr", "eval_loss"} <= set(metrics)


@pytest.mark.slow
def test_two_processes_share_the_prompts_and_match_one(rec_model, rec_tokenizer, tmp_path):
    """Under torchrun (2 CPU processes, gloo) each prompt is scored by exactly one process, every process returns the
    single-process metrics, the main process alone writes the files and computes the baselines. When the weights are
    sharded (FSDP), the shorter shard repeats a prompt so that both processes run as many forward passes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    model_dir, out = tmp_path / "model", tmp_path / "two"
    rec_model.save_pretrained(model_dir)
    rec_tokenizer.save_pretrained(model_dir)
    count = 7  # odd: the two shards differ in size
    worker = Path(__file__).with_name("distributed_eval_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore"}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
               str(model_dir), str(out), str(count)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]

    for key in ("ranked", "generated", "callback_built"):
        built = [rank[key] for rank in ranks]
        assert sorted(built[0] + built[1]) == list(range(count)), key  # each prompt once, by one process
        assert len(built[0]) == 4 and len(built[1]) == 3, key
    assert [rank["baseline_calls"] for rank in ranks] == [1, 0]
    padded = [rank["sharded_weights_built"] for rank in ranks]
    assert len(padded[0]) == len(padded[1]) == 4 and set(padded[0] + padded[1]) == set(range(count))

    # One process, on the model and tokenizer as the workers load them.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    examples, train = load_sample("val")[:count], load_sample("train")[:300]
    builder = PromptBuilder("music")
    one_ranking = evaluate_ranking(model, tokenizer, examples, builder, batch_size=2,
                                   output_dir=tmp_path / "one" / "ranking", show_progress=False,
                                   train_examples=train)  # fmt: skip
    one_generation = evaluate_generation(model, tokenizer, examples, builder, batch_size=2, max_new_tokens=4,
                                         output_dir=tmp_path / "one" / "generation", show_progress=False)  # fmt: skip
    reference = {key: value for key, value in one_ranking.items() if key not in ("baselines", "leak_check")}
    for rank in ranks:  # every process returns the whole result
        assert rank["ranking"].keys() == one_ranking.keys()
        assert {key: rank["ranking"][key] for key in reference} == pytest.approx(reference, abs=1e-9)
        assert rank["ranking"]["baselines"] == one_ranking["baselines"]
        assert rank["ranking"]["leak_check"] == one_ranking["leak_check"]
        assert rank["sharded_weights"] == pytest.approx(reference, abs=1e-9)
        assert rank["generation"] == one_generation
        expected = {f"eval_rank_{key}": value for key, value in reference.items() if key != "n"}
        assert rank["callback"] == pytest.approx(expected, abs=1e-9)
    for protocol in ("ranking", "generation"):
        rows = [json.loads(line) for line in (out / protocol / "predictions.jsonl").read_text().splitlines()]
        ref = [json.loads(line) for line in (tmp_path / "one" / protocol / "predictions.jsonl").read_text().splitlines()]
        assert [row["index"] for row in rows] == list(range(count))
        for row, expected in zip(rows, ref):
            if protocol == "ranking":
                assert row["scores"] == pytest.approx(expected["scores"], abs=1e-5) and row["rank"] == expected["rank"]
            else:
                assert row == expected
        assert json.loads((out / protocol / "metrics.json").read_text())["n"] == count
