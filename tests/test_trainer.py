"""DynamicPOTrainer: drop-in equivalence with trl.DPOTrainer, end-to-end training, metrics and input errors."""

import logging

import pytest
import torch
from conftest import preference_rows
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.trainer import METRIC_KEYS


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


@pytest.mark.parametrize("as_list", [False, True])
def test_k1_equals_trl_dpo_sigmoid_loss(tokenizer, make_model, make_config, tmp_path, as_list):
    rows = [
        {"prompt": f"The user listened to{a}. Next:", "chosen": c, "rejected": [r] if as_list else r}
        for a, c, r in [(" Muse", " Placebo", " Shakira"), (" Air", " Moby", " Slayer, Nirvana"), (" Pixies", " The Cure", " Madonna")]
    ]
    common = dict(per_device_train_batch_size=3, bf16=False, gradient_checkpointing=False, report_to=[], beta=0.1)
    dpo = DPOTrainer(
        model=make_model(seed=1),
        ref_model=make_model(seed=2),
        args=DPOConfig(str(tmp_path / "dpo"), **common),
        train_dataset=Dataset.from_list([{**r, "rejected": r["rejected"][0] if as_list else r["rejected"]} for r in rows]),
        processing_class=tokenizer,
    )
    ours = DynamicPOTrainer(
        model=make_model(seed=1),
        ref_model=make_model(seed=2),
        args=make_config(dynamic_beta=False, **{k: v for k, v in common.items() if k != "per_device_train_batch_size"}, per_device_train_batch_size=3),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    dpo_batch, our_batch = _batch(dpo), _batch(ours)
    dpo_loss = dpo.compute_loss(dpo.model, dpo_batch)
    our_loss = ours.compute_loss(ours.model, our_batch)
    assert abs(dpo_loss.item() - 0.6931) > 1e-3, "policy and reference must differ for the test to mean anything"
    torch.testing.assert_close(our_loss, dpo_loss, atol=1e-5, rtol=1e-5)
    dpo_loss.backward()
    our_loss.backward()
    for (name, p_dpo), (_, p_ours) in zip(dpo.model.named_parameters(), ours.model.named_parameters()):
        torch.testing.assert_close(p_ours.grad, p_dpo.grad, atol=1e-5, rtol=1e-4, msg=name)


def _train_and_check(trainer):
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "no trainable parameter changed"
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged
    from trl_dynamicpo.losses import uses_reference_model

    # Without a reference there is no log-ratio to the starting model, so no `chosen_logp_shift` (and no key).
    without = set() if uses_reference_model(trainer.args) else {"dynamicpo/chosen_logp_shift"}
    for key in METRIC_KEYS:
        if key in without:
            assert key not in logged[0], key
            continue
        assert key in logged[0], f"metric {key} missing from the logs"
        assert all(torch.isfinite(torch.tensor(h[key])) for h in logged)
    first = logged[0]
    args, k_max = trainer.args, max(len(r) for r in trainer.train_dataset["rejected_ids"])
    assert 1 <= first["dynamicpo/boundary_negatives"] <= k_max
    assert first["dynamicpo/beta_min"] <= first["dynamicpo/beta_mean"] <= first["dynamicpo/beta_max"]
    low, high = args.beta * (1 - args.beta_scale), args.beta * (1 + args.beta_scale)
    assert first["dynamicpo/beta_min"] >= low * (1 - 1e-6) and first["dynamicpo/beta_max"] <= high * (1 + 1e-6)
    assert 0.0 <= first["dynamicpo/boundary_grad_share"] <= 1.0 + 1e-6
    return logged


def test_train_with_explicit_reference(tokenizer, make_model, make_config):
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(), args=make_config(max_steps=9),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    with torch.no_grad():
        before = trainer.compute_loss(trainer.model, batch)
    _train_and_check(trainer)
    with torch.no_grad():
        after = trainer.compute_loss(trainer.model, batch)
    assert after < before


def test_train_with_lora_reference_is_adapter_off(tokenizer, make_model, make_config):
    from peft import LoraConfig

    trainer = DynamicPOTrainer(
        model=make_model(), args=make_config(learning_rate=5e-2),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert trainer.ref_model is None
    _train_and_check(trainer)
    # After training the adapter changed the policy; the reference (adapter disabled) must still be the base model.
    batch = _batch(trainer)
    ref_chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)
    base = make_model()
    base_trainer = DynamicPOTrainer(
        model=base, ref_model=make_model(), args=make_config(),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )
    from trl_dynamicpo.packing import completion_logps

    with torch.no_grad():
        expected = completion_logps(base_trainer.model, batch)[:, 0]
        policy = completion_logps(trainer.model, batch)[:, 0]
    torch.testing.assert_close(ref_chosen, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(policy, expected, atol=1e-4)


def test_train_with_precomputed_reference(tokenizer, make_model, make_config):
    trainer = DynamicPOTrainer(
        model=make_model(), args=make_config(precompute_ref_log_probs=True),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )
    assert trainer.ref_model is None
    data = trainer.train_dataset
    # TRL's precompute loop stores one value per negative slot: K_max per row, 0 past the row's K.
    k_max = max(len(r) for r in data["rejected_ids"])
    assert trainer.data_collator.negative_slots == k_max
    assert all(len(r) == k_max for r in data["ref_rejected_logps"])
    assert all(r[len(ids):] == [0.0] * (k_max - len(ids)) for r, ids in zip(data["ref_rejected_logps"], data["rejected_ids"]))
    # The precomputed values are the initial policy's log-probs.
    live = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(), args=make_config(),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )
    batch = live.data_collator([live.train_dataset[i] for i in range(4)])
    chosen, rejected = live.compute_ref_log_probs(live.ref_model, batch)
    torch.testing.assert_close(torch.tensor(data["ref_chosen_logps"][:4]), chosen, atol=1e-5, rtol=1e-5)
    flat = [v for row, ids in zip(data["ref_rejected_logps"][:4], data["rejected_ids"][:4]) for v in row[: len(ids)]]
    torch.testing.assert_close(torch.tensor(flat), rejected[batch["rejected_mask"]], atol=1e-5, rtol=1e-5)
    _train_and_check(trainer)


def test_mppo_loads_no_reference(tokenizer, make_model, make_config):
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(seed=3), args=make_config(multi_negative_loss="mppo", learning_rate=0.1),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )
    assert trainer.ref_model is None and not trainer.args.precompute_ref_log_probs
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names
    _train_and_check(trainer)


def test_conversational_rows(tokenizer, make_model, make_config):
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(), args=make_config(max_steps=1),
        train_dataset=Dataset.from_list(preference_rows(conversational=True)), processing_class=tokenizer,
    )
    row = trainer.train_dataset[2]
    assert len(row["rejected_ids"]) == 3
    assert tokenizer.decode(row["chosen_ids"]).strip().startswith(preference_rows()[2]["chosen"].strip())
    _train_and_check(trainer)


def test_eval_logs_metrics(tokenizer, make_model, make_config):
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(), args=make_config(max_steps=1),
        train_dataset=Dataset.from_list(preference_rows()), eval_dataset=Dataset.from_list(preference_rows(5)),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and "eval_rewards/accuracies" in metrics and "eval_dynamicpo/beta_mean" in metrics


def test_evaluate_on_a_dataset_with_more_negatives_widens_the_slots(tokenizer, make_model, make_config):
    """`evaluate(eval_dataset=...)` prepares and precomputes a new dataset with TRL's code; one with more negatives
    widens the collator's slots, and the precomputed loss equals the live one (a reference model is kept)."""
    def build(precompute):
        return DynamicPOTrainer(
            model=make_model(seed=1), ref_model=make_model(seed=2),
            args=make_config(precompute_ref_log_probs=precompute, per_device_eval_batch_size=3),
            train_dataset=Dataset.from_list(preference_rows(6, k_max=2)), processing_class=tokenizer,
        )  # fmt: skip

    stored, live = build(True), build(False)
    assert stored.data_collator.negative_slots == live.data_collator.negative_slots == 2
    wide = Dataset.from_list(preference_rows(6, k_max=4))
    results = [trainer.evaluate(eval_dataset=wide) for trainer in (stored, live)]
    assert stored.data_collator.negative_slots == live.data_collator.negative_slots == 4
    assert results[0]["eval_loss"] == pytest.approx(results[1]["eval_loss"], abs=1e-6)
    # The train rows, precomputed with 2 slots, still collate at the new width.
    batch = stored.data_collator([stored.train_dataset[i] for i in range(3)])
    assert batch["ref_rejected_logps"].shape == batch["rejected_mask"].shape == (3, 4)


PRECOMPUTE_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
from conftest import ARTISTS, preference_rows
from datasets import load_from_disk
from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.tiny import build_tiny_model, build_tokenizer

corpus = [f"The user listened to{a},{b} and{c}. Next:{d}</s>" for a in ARTISTS for b in ARTISTS[:5] for c in ARTISTS[:3]
          for d in ARTISTS[:2]]
tokenizer = build_tokenizer(corpus, vocab_size=400)
args = DynamicPOConfig(sys.argv[1], precompute_ref_log_probs=True, precompute_ref_batch_size=1, use_cpu=True,
                       bf16=False, report_to=[], gradient_checkpointing=False)
# On disk, so that both processes read the cache file rank 0 writes (an in-memory dataset's is per process, in TRL).
trainer = DynamicPOTrainer(model=build_tiny_model(tokenizer, seed=0), args=args,
                           train_dataset=load_from_disk(sys.argv[1] + "/data"), processing_class=tokenizer)
if trainer.accelerator.is_main_process:
    data = trainer.train_dataset
    with open(sys.argv[1] + "/ref.json", "w") as handle:
        json.dump({"chosen": list(data["ref_chosen_logps"]), "rejected": list(data["ref_rejected_logps"])}, handle)
"""


@pytest.mark.slow
def test_precompute_on_two_processes_matches_one(tokenizer, make_model, make_config, tmp_path):
    """TRL's precompute loop gathers one batch per process and step: with one row per process (K = 1, 2 or 3), the
    widths differ unless the collator fixes the slots. Two gloo processes store what one process stores."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "precompute.py"
    script.write_text(PRECOMPUTE_SCRIPT)
    Dataset.from_list(preference_rows(8)).save_to_disk(str(tmp_path / "data"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               str(tmp_path), str(repo / "tests")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    two = json.loads((tmp_path / "ref.json").read_text())
    one = DynamicPOTrainer(
        model=make_model(seed=0), args=make_config(precompute_ref_log_probs=True, precompute_ref_batch_size=1),
        train_dataset=Dataset.from_list(preference_rows(8)), processing_class=tokenizer,
    ).train_dataset  # fmt: skip
    assert len(two["chosen"]) == 8 and all(len(list(r)) == 3 for r in two["rejected"])
    torch.testing.assert_close(torch.tensor(two["chosen"]), torch.tensor(list(one["ref_chosen_logps"])), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(two["rejected"]), torch.tensor(list(one["ref_rejected_logps"])), atol=1e-5,
                               rtol=0)


def test_model_card_names_the_paper(tokenizer, make_model, make_config, tmp_path):
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(), args=make_config(),
        train_dataset=Dataset.from_list(preference_rows(4)), processing_class=tokenizer,
    )
    trainer.create_model_card(model_name="tiny")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "2605.00327" in card and "dynamicpo" in card.lower()


BAD_ROWS = [
    ({"prompt": "p", "chosen": " a"}, "missing field"),
    ({"prompt": "p", "chosen": " a", "rejected": []}, "'rejected' is an empty list"),
    ({"prompt": "p", "chosen": " a", "rejected": [" b", " a"]}, "'rejected[1]' is identical to 'chosen'"),
    ({"prompt": "p", "chosen": " a", "rejected": [" b", "a "]}, "'rejected[1]' differs from 'chosen' only by whitespace"),
    ({"prompt": "p", "chosen": " a", "rejected": [" b", " c", " b"]}, "'rejected[2]' is identical to 'rejected[0]'"),
    ({"prompt": "p", "chosen": " a", "rejected": {"x": 1}}, "field 'rejected' must be"),
    ({"prompt": 3, "chosen": " a", "rejected": [" b"]}, "field 'prompt' must be a string or a list of messages"),
    ({"prompt": "", "chosen": " a", "rejected": [" b"]}, "field 'prompt' tokenizes to no tokens"),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS)
def test_bad_rows_raise_naming_row_and_field(tokenizer, bad, message):
    from trl_dynamicpo.preprocessing import tokenize_row

    options = dict(processing_class=tokenizer, max_length=None, truncation_mode="keep_start",
                   duplicate_negatives="error", drop_invalid_rows=False)  # fmt: skip
    good = {"prompt": "q", "chosen": " x", "rejected": [" y"]}
    with pytest.raises(ValueError, match=r"Row 1: .*" + message.split("'")[0]) as info:
        tokenize_row(good, 0, **options)
        tokenize_row(bad, 1, **options)
    assert message in str(info.value)
    dropped = tokenize_row(bad, 1, **{**options, "drop_invalid_rows": True})
    assert message in dropped["_invalid"] and dropped["prompt_ids"] == []


def test_bad_row_stops_trainer_before_training(tokenizer, make_model, make_config):
    rows = preference_rows(6)
    rows[4]["rejected"] = [rows[4]["chosen"]]
    with pytest.raises(ValueError, match=r"Row 4: field 'rejected\[0\]' is identical to 'chosen'"):
        DynamicPOTrainer(
            model=make_model(), ref_model=make_model(), args=make_config(),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        )


def test_wrong_rejected_type_in_dataset(tokenizer, make_model, make_config):
    rows = [{"prompt": "The user listened to Muse. Next:", "chosen": " Air", "rejected": [1, 2]}]
    with pytest.raises(ValueError, match=r"Row 0: field 'rejected' must be a string or a list of strings"):
        DynamicPOTrainer(
            model=make_model(), ref_model=make_model(), args=make_config(),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        )


def test_max_length_truncation_is_counted(tokenizer, make_model, make_config, caplog):
    rows = preference_rows(8)
    prompt_len = max(len(tokenizer(r["prompt"])["input_ids"]) for r in rows)
    rows[0]["prompt"] = rows[0]["prompt"] * 20  # this prompt alone exceeds max_length: dropped, counted
    with caplog.at_level(logging.WARNING):
        trainer = DynamicPOTrainer(
            model=make_model(), ref_model=make_model(), args=make_config(max_length=prompt_len + 2),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        )
    assert len(trainer.train_dataset) == 7
    assert "Dropped 1 of 8 train examples" in caplog.text
    for row in trainer.train_dataset:
        for completion in [row["chosen_ids"], *row["rejected_ids"]]:
            assert len(row["prompt_ids"]) + len(completion) <= prompt_len + 2
    # Truncation never drops a negative on its own.
    assert [len(r) for r in trainer.train_dataset["rejected_ids"]] == [len(r["rejected"]) for r in rows[1:]]


@pytest.mark.parametrize(
    "option",
    [dict(loss_type="ipo"), dict(loss_type=["sigmoid", "hinge"]), dict(loss_type=["sft"]), dict(ld_alpha=0.5),
     dict(use_weighting=True), dict(f_divergence_type="forward_kl"), dict(label_smoothing=0.5),
     dict(label_smoothing=-0.1), dict(multi_negative_loss="foo"), dict(beta_scale=1.0),
     dict(truncation_mode="middle"), dict(duplicate_negatives="keep")],
)  # fmt: skip
def test_unsupported_options_raise(option, tmp_path):
    name = next(iter(option))
    with pytest.raises(ValueError, match=name if name != "truncation_mode" else "Unsupported truncation mode: middle"):
        DynamicPOConfig(str(tmp_path), bf16=False, **option)


@pytest.mark.parametrize(
    "option",
    [dict(loss_weights=[1.0]), dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]),
     dict(label_smoothing=0.1), dict(padding_free=True), dict(reference_free=True),
     dict(duplicate_negatives="remove"), dict(drop_invalid_rows=True), dict(truncation_mode="keep_end")],
)  # fmt: skip
def test_options_trl_accepts_are_accepted(option, tmp_path):
    DynamicPOConfig(str(tmp_path), bf16=False, **option)


def test_defaults_follow_dpo_config(tmp_path):
    ours, theirs = DynamicPOConfig(str(tmp_path), bf16=False), DPOConfig(str(tmp_path), bf16=False)
    assert ours.beta == theirs.beta == 0.1
    for name in ("loss_type", "loss_weights", "label_smoothing", "max_length", "truncation_mode", "padding_free"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.boundary_selection and ours.dynamic_beta  # DynamicPO's own switches stay on


def test_plain_dpo_config_is_rejected_with_advice(tokenizer, make_model, tmp_path):
    with pytest.raises(TypeError, match="DynamicPOConfig"):
        DynamicPOTrainer(
            model=make_model(), args=DPOConfig(str(tmp_path), bf16=False),
            train_dataset=Dataset.from_list(preference_rows(2)), processing_class=tokenizer,
        )


def test_instantiated_model_without_reference_gets_a_copy(tokenizer, make_model, make_config):
    model = make_model()
    trainer = DynamicPOTrainer(
        model=model, args=make_config(), train_dataset=Dataset.from_list(preference_rows(4)), processing_class=tokenizer
    )
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), trainer.ref_model.named_parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name
