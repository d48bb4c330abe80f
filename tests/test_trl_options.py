"""`DPOConfig` options and `DPOTrainer` features as a TRL user meets them, with `trl.DPOTrainer` as the oracle.

Each test builds both trainers on the same data and seeds where TRL has the feature (K = 1, `dynamic_beta=False`,
where DynamicPO's loss is TRL's DPO loss) and compares tokens, losses, gradients, warnings or error messages;
where it has none, against an independent computation.
"""

import copy
import importlib.util
import json
import logging
import math

import pytest
import torch
from conftest import ARTISTS, preference_rows
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer


COMMON = dict(bf16=False, gradient_checkpointing=False, report_to=[], beta=0.1, seed=0, use_cpu=True)
PAIRS = [(" Muse", " Placebo", " Shakira"), (" Air", " Moby", " Slayer, Nirvana"), (" Pixies", " The Cure", " Madonna")]


def pairwise_rows():
    return [{"prompt": f"The user listened to{a}. Next:", "chosen": c, "rejected": r} for a, c, r in PAIRS]


def build_pair(tokenizer, make_model, tmp_path, rows, *, options=None, trl_only=None, batch_size=3):
    """TRL's DPOTrainer and ours on the same rows, models, seeds and `options` (ours with the dual-margin beta off;
    `trl_only` is added to TRL's config only)."""
    common = {**COMMON, "per_device_train_batch_size": batch_size, **(options or {})}
    dpo = DPOTrainer(
        model=make_model(seed=1), ref_model=make_model(seed=2),
        args=DPOConfig(str(tmp_path / "dpo"), **common, **(trl_only or {})),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )  # fmt: skip
    ours = DynamicPOTrainer(
        model=make_model(seed=1), ref_model=make_model(seed=2),
        args=DynamicPOConfig(str(tmp_path / "ours"), dynamic_beta=False, **common),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )  # fmt: skip
    return dpo, ours


def first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def assert_same_loss_and_grads(dpo, ours):
    dpo_loss = dpo.compute_loss(dpo.model, first_batch(dpo))
    our_loss = ours.compute_loss(ours.model, first_batch(ours))
    assert abs(dpo_loss.item() - math.log(2)) > 1e-4, "policy and reference must differ for the test to mean anything"
    torch.testing.assert_close(our_loss, dpo_loss, atol=1e-5, rtol=1e-5)
    dpo_loss.backward()
    our_loss.backward()
    for (name, p_dpo), (_, p_ours) in zip(dpo.model.named_parameters(), ours.model.named_parameters()):
        torch.testing.assert_close(p_ours.grad, p_dpo.grad, atol=1e-5, rtol=1e-4, msg=name)
    return our_loss


def assert_same_tokens(dpo, ours):
    for column in ("prompt_ids", "chosen_ids"):
        assert ours.train_dataset[column] == dpo.train_dataset[column], column
    assert [r[0] for r in ours.train_dataset["rejected_ids"]] == dpo.train_dataset["rejected_ids"]


# ----------------------------------------------------------------------------------------------- objectives


@pytest.mark.parametrize("weights", [[1.0], [2.5]])
def test_loss_weights_of_one_objective_as_trl(tokenizer, make_model, tmp_path, weights):
    options = {"loss_weights": weights}
    dpo, ours = build_pair(tokenizer, make_model, tmp_path, pairwise_rows(), options=options)
    assert_same_loss_and_grads(dpo, ours)


def test_rpo_sigmoid_plus_sft_as_trl(tokenizer, make_model, tmp_path):
    options = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}
    dpo, ours = build_pair(tokenizer, make_model, tmp_path, pairwise_rows(), options=options)
    assert_same_loss_and_grads(dpo, ours)


def test_rpo_with_k_negatives_adds_the_chosen_nll_per_token(tokenizer, make_model, make_config):
    """K > 1: the total is w_pref * mean(multi-negative loss) + w_sft * NLL per token of the chosen answers."""
    from trl_dynamicpo.losses import multi_negative_loss

    rows = preference_rows(6)
    trainer = DynamicPOTrainer(
        model=make_model(seed=1), ref_model=make_model(seed=2),
        args=make_config(loss_type=["sigmoid", "sft"], loss_weights=[0.7, 0.3], per_device_train_batch_size=6),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        chosen, rejected = naive_logps(trainer.model, trainer.train_dataset)
        ref_chosen, ref_rejected = naive_logps(trainer.ref_model, trainer.train_dataset)
    mask = batch["rejected_mask"]
    pad = lambda rows: torch.tensor([r + [0.0] * (mask.size(1) - len(r)) for r in rows])  # noqa: E731
    losses, _ = multi_negative_loss(torch.tensor(chosen), pad(rejected), torch.tensor(ref_chosen), pad(ref_rejected),
                                    beta=trainer.args.beta, rejected_mask=mask)  # fmt: skip
    n_tokens = sum(len(ids) for ids in trainer.train_dataset["chosen_ids"])
    expected = 0.7 * losses.mean() + 0.3 * (-sum(chosen) / n_tokens)
    torch.testing.assert_close(loss.detach(), expected.float(), atol=1e-5, rtol=1e-5)


def test_label_smoothing_is_conservative_dpo_as_trl_aot_on_one_pair(tokenizer, make_model, tmp_path):
    # TRL 1.16's "sigmoid" ignores label_smoothing; its "aot" loss on a batch of one pair is conservative DPO.
    rows = pairwise_rows()[:1]
    dpo, ours = build_pair(tokenizer, make_model, tmp_path, rows, batch_size=1, options={"label_smoothing": 0.2},
                           trl_only={"loss_type": ["aot"]})  # fmt: skip
    smoothed = assert_same_loss_and_grads(dpo, ours)
    plain = DynamicPOTrainer(
        model=make_model(seed=1), ref_model=make_model(seed=2),
        args=DynamicPOConfig(str(tmp_path / "plain"), dynamic_beta=False, per_device_train_batch_size=1, **COMMON),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )  # fmt: skip
    assert abs(plain.compute_loss(plain.model, first_batch(plain)).item() - smoothed.item()) > 1e-4


def test_reference_free_dmpo_runs_no_reference(tokenizer, make_model, make_config, caplog):
    from trl_dynamicpo.losses import multi_negative_loss
    from trl_dynamicpo.packing import completion_logps

    with caplog.at_level(logging.WARNING):
        trainer = DynamicPOTrainer(
            model=make_model(), ref_model=make_model(seed=3), args=make_config(reference_free=True, max_steps=2),
            train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
        )  # fmt: skip
    assert "is reference-free: the `ref_model` passed is not used" in caplog.text
    assert trainer.ref_model is None and not trainer.precompute_ref_logps
    assert not trainer.args.precompute_ref_log_probs  # the user's setting, unchanged
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names
    batch = first_batch(trainer)
    loss = trainer.compute_loss(trainer.model, batch)
    with torch.no_grad():
        logps = completion_logps(trainer.model, batch)
    expected, _ = multi_negative_loss(logps[:, 0], logps[:, 1:], None, None, beta=trainer.args.beta,
                                      rejected_mask=batch["rejected_mask"], reference_free=True)  # fmt: skip
    torch.testing.assert_close(loss.detach(), expected.mean(), atol=1e-6, rtol=1e-6)
    trainer.train()
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)


def test_mppo_loads_no_reference_and_runs_no_reference_forward(tokenizer, make_model, make_config, tmp_path,
                                                             monkeypatch):
    """A policy given by name is loaded once (DPOTrainer loads it a second time as the reference for DMPO), the
    configuration is left as the user wrote it, and training runs one forward per step (no reference forward)."""
    from transformers import PreTrainedModel

    make_model().save_pretrained(tmp_path / "policy")
    loads, original = [], PreTrainedModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counting))

    def build(**options):
        loads.clear()
        args = make_config(max_steps=2, per_device_train_batch_size=2, **options)
        trainer = DynamicPOTrainer(model=str(tmp_path / "policy"), args=args,
                                   train_dataset=Dataset.from_list(preference_rows(4)), processing_class=tokenizer)  # fmt: skip
        return trainer, args, len(loads)

    _, _, dmpo_loads = build()
    trainer, args, mppo_loads = build(multi_negative_loss="mppo")
    assert (dmpo_loads, mppo_loads) == (2, 1)
    assert trainer.ref_model is None and not trainer.precompute_ref_logps
    assert args.precompute_ref_log_probs is False and "ref_chosen_logps" not in trainer.train_dataset.column_names
    forwards = []
    trainer.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    trainer.train()
    assert len(forwards) == 2  # one policy forward per step, nothing else


# ------------------------------------------------------------------------------------------- TRL fall-backs


def test_padding_free_warns_and_falls_back_as_trl(tokenizer, make_model, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        dpo, ours = build_pair(tokenizer, make_model, tmp_path, pairwise_rows(), options={"padding_free": True})
    message = "`padding_free=True` is temporarily unavailable after a refactor and is currently disabled."
    assert caplog.text.count(message) == 2  # TRL's own warning, once for each trainer
    assert dpo.padding_free is False and ours.padding_free is False
    assert_same_loss_and_grads(dpo, ours)


def test_use_liger_kernel_as_trl(tokenizer, make_model, tmp_path):
    with pytest.warns(FutureWarning, match="`use_liger_kernel=True` is deprecated") as caught:
        dpo, ours = build_pair(tokenizer, make_model, tmp_path, pairwise_rows(), options={"use_liger_kernel": True})
    assert sum("use_liger_kernel" in str(w.message) for w in caught) == 2
    assert dpo.args.liger_kernel_config == ours.args.liger_kernel_config == {"fused_linear_cross_entropy": False}
    if importlib.util.find_spec("liger_kernel") is None:
        errors = []
        for trainer in (dpo, ours):
            with pytest.raises(ImportError) as info:
                trainer.train()
            errors.append(str(info.value))
        assert errors[0] == errors[1] and "liger-kernel" in errors[0]
    else:  # pragma: no cover - liger-kernel is not installed in the test environment
        pytest.skip("liger-kernel is installed: its kernels need a GPU, covered by TRL's own tests")


def test_pad_token_missing_from_the_vocabulary_raises_as_trl(tokenizer, make_model, tmp_path):
    messages = []
    for trainer_cls, config_cls in ((DPOTrainer, DPOConfig), (DynamicPOTrainer, DynamicPOConfig)):
        with pytest.warns(FutureWarning, match="`pad_token` is deprecated"):
            args = config_cls(str(tmp_path / trainer_cls.__name__), pad_token="<nope>", **COMMON)
        with pytest.raises(ValueError) as info:
            trainer_cls(model=make_model(), ref_model=make_model(), args=args, processing_class=copy.deepcopy(tokenizer),
                        train_dataset=Dataset.from_list(pairwise_rows()))  # fmt: skip
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "'<nope>'" in messages[0]


def test_precompute_on_an_iterable_dataset_raises_trl_error(tokenizer, make_model, make_config):
    rows = Dataset.from_list(preference_rows(4)).to_iterable_dataset()
    with pytest.raises(ValueError, match=r"`precompute_ref_log_probs=True` is not supported with IterableDataset"):
        DynamicPOTrainer(model=make_model(), args=make_config(precompute_ref_log_probs=True), train_dataset=rows,
                         processing_class=tokenizer)  # fmt: skip


def test_trl_pairwise_collator_is_refused_clearly(tokenizer, make_model, make_config):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    with pytest.raises(TypeError, match="DataCollatorForPreference is TRL's pairwise collator.*Leave `data_collator`"):
        DynamicPOTrainer(
            model=make_model(), ref_model=make_model(), args=make_config(),
            data_collator=DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id),
            train_dataset=Dataset.from_list(preference_rows(4)), processing_class=tokenizer,
        )  # fmt: skip


def test_invalid_truncation_mode_is_refused_at_config_time(tmp_path):
    DPOConfig(str(tmp_path), bf16=False, truncation_mode="middle")  # TRL accepts it until a row needs cutting
    with pytest.raises(ValueError, match="Unsupported truncation mode: middle, expected 'keep_start' or 'keep_end'"):
        DynamicPOConfig(str(tmp_path), bf16=False, truncation_mode="middle")


def test_keep_end_keeps_the_end_of_an_over_long_completion_as_trl(tokenizer, make_model, tmp_path):
    long_answer = "".join(ARTISTS[:12])
    rows = [{"prompt": "The user listened to Muse. Next:", "chosen": long_answer, "rejected": " Air"}]
    max_length = 10
    assert len(tokenizer(long_answer)["input_ids"]) > max_length
    options = {"max_length": max_length, "truncation_mode": "keep_end"}
    with pytest.warns(FutureWarning, match="keep_end"):
        dpo, ours = build_pair(tokenizer, make_model, tmp_path, rows, options=options, batch_size=1)
    # TRL cuts each prompt+completion to its last `max_length` tokens in the collator; the tokens it scores are
    # the labelled ones after the first position.
    trl_batch = dpo.data_collator([dpo.train_dataset[0]])
    scored = []
    for ids, mask in zip(trl_batch["input_ids"].tolist(), trl_batch["completion_mask"].tolist()):
        scored.append([t for t, m in list(zip(ids, mask))[1:] if m])
    row = ours.train_dataset[0]
    assert row["chosen_ids"] == scored[0]  # the end of the over-long answer, EOS included
    assert row["rejected_ids"][0] == scored[1]
    assert row["chosen_ids"][-1] == tokenizer.eos_token_id
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) == max_length


# ---------------------------------------------------------------------------------------- evaluation metrics


def naive_logps(model, dataset):
    """Summed log-prob of each completion from a plain forward of `prompt + completion` (no packing, no head)."""
    chosen, rejected = [], []
    for row in dataset:
        scores = []
        for completion in [row["chosen_ids"], *row["rejected_ids"]]:
            ids = torch.tensor([row["prompt_ids"] + completion])
            logits = model(input_ids=ids).logits.float()
            logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
            n = len(completion)
            targets = ids[0, -n:]
            scores.append(logprobs[-n:].gather(1, targets[:, None]).sum().item())
        chosen.append(scores[0])
        rejected.append(scores[1:])
    return chosen, rejected


def hit_rate_at_1(eval_pred):
    """HR@1 of the chosen answer among its negatives: the example from docs/trl_parity.md."""
    import numpy as np

    logps, valid = eval_pred.predictions, eval_pred.label_ids == 1
    negatives = np.where(valid[:, 1:], logps[:, 1:], -np.inf)
    return {"hr@1": float((logps[:, 0] > negatives.max(axis=1)).mean())}


def test_compute_metrics_receives_per_completion_log_probs(tokenizer, make_model, make_config):
    seen = {}

    def metrics(eval_pred):
        seen["predictions"], seen["label_ids"] = eval_pred.predictions, eval_pred.label_ids
        return hit_rate_at_1(eval_pred)

    rows = preference_rows(7)  # K = 1, 2, 3, 1, ...: batches of 2 have different widths
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(seed=1), args=make_config(per_device_eval_batch_size=2),
        train_dataset=Dataset.from_list(rows), eval_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        compute_metrics=metrics,
    )  # fmt: skip
    result = trainer.evaluate()
    with torch.no_grad():
        chosen, rejected = naive_logps(trainer.model, trainer.eval_dataset)
    predictions, label_ids = seen["predictions"], seen["label_ids"]
    assert predictions.shape == label_ids.shape == (7, 4)
    for i, (c, negs) in enumerate(zip(chosen, rejected)):
        valid = label_ids[i] == 1
        assert valid.tolist() == [True] * (1 + len(negs)) + [False] * (3 - len(negs))
        torch.testing.assert_close(torch.tensor(predictions[i][valid]).double(), torch.tensor([c, *negs]).double(),
                                   atol=1e-4, rtol=1e-5)  # fmt: skip
    expected = sum(c > max(negs) for c, negs in zip(chosen, rejected)) / len(chosen)
    assert result["eval_hr@1"] == pytest.approx(expected)
    assert "eval_loss" in result and "eval_rewards/accuracies" in result


def test_prediction_loss_only_skips_the_predictions(tokenizer, make_model, make_config):
    called = []
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(seed=1), args=make_config(prediction_loss_only=True),
        train_dataset=Dataset.from_list(preference_rows(4)), eval_dataset=Dataset.from_list(preference_rows(4)),
        processing_class=tokenizer, compute_metrics=lambda p: called.append(p) or {},
    )  # fmt: skip
    loss, predictions, labels = trainer.prediction_step(trainer.model, first_batch(trainer), prediction_loss_only=True)
    assert predictions is None and labels is None and torch.isfinite(loss)
    result = trainer.evaluate()
    assert not called and "eval_loss" in result


# -------------------------------------------------------------------------------------- rows TRL trains on


def test_empty_completions_and_blank_prompts_train_as_trl(tokenizer, make_model, tmp_path):
    rows = [
        {"prompt": "The user listened to Muse. Next:", "chosen": "", "rejected": " Shakira"},
        {"prompt": "  ", "chosen": " Air", "rejected": " Slayer"},
        {"prompt": "The user listened to Air. Next:", "chosen": " Moby", "rejected": ""},
    ]
    dpo, ours = build_pair(tokenizer, make_model, tmp_path, rows)
    assert_same_tokens(dpo, ours)
    assert ours.train_dataset[0]["chosen_ids"] == [tokenizer.eos_token_id]  # TRL's EOS: a real token
    assert_same_loss_and_grads(dpo, ours)


TOOLS_TEMPLATE = (
    "{% if tools %}<|system|>\nTools: {{ tools | tojson }}</s>\n{% endif %}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}<call>{{ call['function']['name'] }}"
    "({{ call['function']['arguments'] | tojson }})</call>{% endfor %}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _tool_call(artist):
    return [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "play", "arguments": {"artist": artist}}}]}]  # fmt: skip


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "list"])
def test_tools_and_tool_call_answers_as_trl(tokenizer, make_model, tmp_path, as_json):
    schema = [{"type": "function", "function": {"name": "play", "description": "Play an artist",
                                                "parameters": {"type": "object", "properties": {"artist": {"type": "string"}}}}}]  # fmt: skip
    tool_tokenizer = copy.deepcopy(tokenizer)
    tool_tokenizer.chat_template = TOOLS_TEMPLATE
    rows = [
        {"prompt": [{"role": "user", "content": f"Play something like{a}"}], "chosen": _tool_call(c.strip()),
         "rejected": _tool_call(r.strip()), "tools": json.dumps(schema) if as_json else schema}
        for a, c, r in PAIRS
    ]  # fmt: skip
    dpo, ours = build_pair(tool_tokenizer, make_model, tmp_path, rows)
    assert_same_tokens(dpo, ours)
    prompt = tool_tokenizer.decode(ours.train_dataset[0]["prompt_ids"])
    assert "Tools:" in prompt and "Play an artist" in prompt
    assert "<call>play" in tool_tokenizer.decode(ours.train_dataset[0]["chosen_ids"])
    assert_same_loss_and_grads(dpo, ours)


def test_drop_invalid_rows_drops_and_logs_row_numbers(tokenizer, make_model, make_config, caplog):
    rows = preference_rows(8)
    rows[2]["rejected"] = [rows[2]["chosen"]]
    rows[4]["prompt"] = ""
    rows[5]["rejected"] = []
    build = lambda **options: DynamicPOTrainer(  # noqa: E731
        model=make_model(), ref_model=make_model(), args=make_config(**options),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
    )
    with pytest.raises(ValueError, match=r"Row 2: field 'rejected\[0\]' is identical to 'chosen'.*drop_invalid_rows"):
        build()
    with caplog.at_level(logging.WARNING):
        trainer = build(drop_invalid_rows=True)
    assert "Dropped 3 of 8 train rows that are data bugs (drop_invalid_rows=True): rows [2, 4, 5]" in caplog.text
    kept = [rows[i] for i in (0, 1, 3, 6, 7)]
    assert [tokenizer.decode(r) for r in trainer.train_dataset["prompt_ids"]] == [r["prompt"] for r in kept]
    trainer.train()


def test_duplicate_negatives_removed_or_refused_and_counted(tokenizer, make_model, make_config, caplog):
    rows = preference_rows(4, k_max=1)
    answer = rows[1]["chosen"]
    rows[1]["chosen"] = answer.strip() + " "  # the same answer as the last negative, up to whitespace
    rows[1]["rejected"] = [" Shakira", " Shakira", "Shakira ", answer]
    clean = copy.deepcopy(rows)
    clean[1]["rejected"] = [" Shakira"]
    build = lambda data, **options: DynamicPOTrainer(  # noqa: E731
        model=make_model(seed=1), ref_model=make_model(seed=2),
        args=make_config(per_device_train_batch_size=4, **options), train_dataset=Dataset.from_list(data),
        processing_class=tokenizer,
    )
    with pytest.raises(ValueError, match=r"Row 1: field 'rejected\[1\]' is identical to 'rejected\[0\]'.*count twice"):
        build(rows)
    with caplog.at_level(logging.WARNING):
        deduplicated = build(rows, duplicate_negatives="remove")
    assert "Removed 3 repeated negatives from 1 of 4 train rows (duplicate_negatives='remove'): rows [1]" in caplog.text
    assert len(deduplicated.train_dataset[1]["rejected_ids"]) == 1
    reference = build(clean)
    batch = deduplicated.data_collator([deduplicated.train_dataset[i] for i in range(4)])
    clean_batch = reference.data_collator([reference.train_dataset[i] for i in range(4)])
    assert torch.equal(batch["rejected_mask"], clean_batch["rejected_mask"])
    torch.testing.assert_close(deduplicated.compute_loss(deduplicated.model, batch),
                               reference.compute_loss(reference.model, clean_batch))  # fmt: skip


# ---------------------------------------------------------------------------------------------- processors


PROCESSOR_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "</s>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def vlm_processor(tokenizer):
    """A multimodal processor (LLaVA's) around the test tokenizer, built offline."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    return LlavaProcessor(image_processor=CLIPImageProcessor(), tokenizer=copy.deepcopy(tokenizer),
                          chat_template=PROCESSOR_TEMPLATE)  # fmt: skip


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_vlm_processor_on_text_only_data_as_trl(tokenizer, make_model, tmp_path, conversational):
    rows = pairwise_rows()
    if conversational:
        rows = [{k: [{"role": "user" if k == "prompt" else "assistant", "content": v.strip()}] for k, v in r.items()}
                for r in rows]  # fmt: skip
    dpo, ours = build_pair(vlm_processor(tokenizer), make_model, tmp_path, rows)
    assert_same_tokens(dpo, ours)
    assert_same_loss_and_grads(dpo, ours)


def test_image_data_is_refused_clearly(tokenizer, make_model, make_config):
    rows = [{**row, "images": [None]} for row in pairwise_rows()]
    for processing_class in (tokenizer, vlm_processor(tokenizer)):
        with pytest.raises(ValueError, match="The train dataset has image data \\(column 'images'\\).*text completions"):
            DynamicPOTrainer(model=make_model(), ref_model=make_model(), args=make_config(),
                             train_dataset=Dataset.from_list(rows), processing_class=processing_class)  # fmt: skip


# ------------------------------------------------------------------------------ loading and precomputation


def test_precomputed_reference_is_cached_across_constructions(tokenizer, make_model, make_config, tmp_path):
    # As in TRL, the cache lives beside the dataset's files (an in-memory dataset has none: nothing is cached).
    from datasets import load_from_disk

    Dataset.from_list(preference_rows(6)).save_to_disk(str(tmp_path / "data"))

    def build(seed):
        model, calls = make_model(seed=seed), []
        model.register_forward_hook(lambda *_: calls.append(1))
        trainer = DynamicPOTrainer(
            model=model, args=make_config(precompute_ref_log_probs=True),
            train_dataset=load_from_disk(str(tmp_path / "data")), processing_class=tokenizer,
        )  # fmt: skip
        return trainer, len(calls)

    first, first_calls = build(seed=11)
    again, again_calls = build(seed=11)  # same data, same weights: read from the cache
    other, other_calls = build(seed=12)  # other weights: another key
    assert first_calls > 0 and again_calls == 0 and other_calls > 0
    assert again.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    assert again.train_dataset["ref_rejected_logps"] == first.train_dataset["ref_rejected_logps"]
    assert other.train_dataset["ref_chosen_logps"] != first.train_dataset["ref_chosen_logps"]


def test_model_revision_also_selects_the_processor(tokenizer, make_model, make_config, tmp_path, monkeypatch):
    """`model_init_kwargs["revision"]` loads the processor of that revision (an offline hub cache with two)."""
    import huggingface_hub.constants as hub

    from trl_dynamicpo.tiny import build_tiny_model

    repo = tmp_path / "hub" / "models--local--tiny"
    for revision, commit in (("main", "a" * 40), ("v2", "b" * 40)):
        tok = copy.deepcopy(tokenizer)
        if revision == "v2":
            tok.add_tokens(["<v2-marker>"])
        tok.save_pretrained(repo / "snapshots" / commit)
        build_tiny_model(tok).save_pretrained(repo / "snapshots" / commit)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    trainer = DynamicPOTrainer(
        model="local/tiny", args=make_config(model_init_kwargs={"revision": "v2"}, multi_negative_loss="mppo"),
        train_dataset=Dataset.from_list(preference_rows(4)),
    )
    assert "<v2-marker>" in trainer.processing_class.get_vocab()
    assert len(trainer.processing_class) == trainer.model.config.vocab_size


# ------------------------------------------------------------------------------- defaults follow the parent


def test_train_command_keeps_trl_beta_unless_the_recipe_sets_it(tmp_path):
    import yaml

    from trl_dynamicpo.cli.parsing import parse_command

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "model_name_or_path": "m"}))
    parse = lambda *flags: parse_command("train", argv=["--config", str(recipe), *flags])[1]  # noqa: E731
    assert parse().beta == 0.1  # `trl-dynamicpo train` without a beta: DPOConfig's, as in TRL
    assert parse("--beta", "0.3").beta == 0.3
    assert parse_command("train", argv=["--output_dir", str(tmp_path)])[1].beta == 0.1
    recipe.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "train": {"beta": 1.0}}))
    assert parse().beta == 1.0  # the paper's value, when the recipe says so
    assert parse_command("sft", argv=["--config", str(recipe)])[1].output_dir == str(tmp_path / "out")


def test_every_paper_recipe_sets_the_paper_beta():
    from pathlib import Path

    from trl_dynamicpo.pipeline import load_recipe, stage_config

    recipes = [p for p in (Path(__file__).parents[1] / "recipes").rglob("*.yaml") if "accelerate" not in p.parts]
    trained = [p for p in recipes if "train" in load_recipe(p)]
    assert len(trained) >= 7
    for path in trained:
        assert stage_config(load_recipe(path), "train").get("beta") == 1.0, path


def test_prompt_token_merge_warns_as_trl(tokenizer, make_model, tmp_path, caplog):
    rows = [{"prompt": "The user listened to Radiohe", "chosen": "ad, Muse", "rejected": "ad, Air"}]  # "...head"
    with caplog.at_level(logging.WARNING):
        build_pair(tokenizer, make_model, tmp_path, rows, batch_size=1)
    warnings = [r.getMessage() for r in caplog.records if "is not a prefix of the tokenized" in r.getMessage()]
    warnings = [m.removeprefix("[RANK 0] ") for m in warnings]  # accelerate's logger names the process
    assert len(warnings) == 2 and warnings[0] == warnings[1], warnings


def test_streamed_rows_are_dropped_and_logged_one_by_one(tokenizer, make_config, caplog):
    from trl_dynamicpo.preprocessing import prepare_preference_dataset

    rows = preference_rows(5)
    rows[3]["rejected"] = [rows[3]["chosen"], " Air", " Air"]
    rows[1]["rejected"] = [rows[1]["chosen"]]
    stream = Dataset.from_list(rows).to_iterable_dataset()
    args = make_config(drop_invalid_rows=True, duplicate_negatives="remove")
    with caplog.at_level(logging.WARNING):
        prepared = list(prepare_preference_dataset(stream, tokenizer, args))
    assert len(prepared) == 4 and [len(r["rejected_ids"]) for r in prepared] == [1, 3, 1, 2]
    assert "Row 1: every negative in field 'rejected' repeats 'chosen'" in caplog.text
    assert "Removed 2 repeated negatives from train row 3 (duplicate_negatives='remove')" in caplog.text


def test_implicit_prompt_rows_train_as_trl(tokenizer, make_model, tmp_path):
    """Pairwise rows without a `prompt` column: the prompt is their common start (TRL's `extract_prompt`)."""
    rows = [{"chosen": f"The user listened to{a}. Next:{c}", "rejected": f"The user listened to{a}. Next:{r}"}
            for a, c, r in PAIRS]  # fmt: skip
    dpo, ours = build_pair(tokenizer, make_model, tmp_path, rows)
    assert_same_tokens(dpo, ours)
    assert_same_loss_and_grads(dpo, ours)


def test_a_pairwise_conversation_is_one_negative(tokenizer):
    from trl_dynamicpo.preprocessing import tokenize_row

    turn = lambda text: [{"role": "assistant", "content": text}, {"role": "user", "content": "ok"}]  # noqa: E731
    row = {"prompt": [{"role": "user", "content": "Next?"}], "chosen": turn("Air"), "rejected": turn("Moby")}
    out = tokenize_row(row, 0, processing_class=tokenizer, max_length=None, truncation_mode="keep_start",
                       duplicate_negatives="remove", drop_invalid_rows=False)  # fmt: skip
    assert len(out["rejected_ids"]) == 1 and out["_removed"] == 0 and out["_invalid"] == ""
