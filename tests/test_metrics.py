"""Logged metrics: TRL's keys with TRL's values at K = 1, and the reductions of the metrics table.

* K = 1, both DynamicPO switches off, packed and naive: `trainer.train()` and `trainer.evaluate()` of
  `DynamicPOTrainer` log every key `trl.DPOTrainer` logs (`loss`, `grad_norm`, `rewards/*`, `logps/*`, `entropy`,
  `logits/*`, `mean_token_accuracy`, `num_tokens`, and their `eval_` versions) with the same values, over a logging
  period of two steps (means over the steps, `num_tokens` cumulative);
* over a logging period, min / max keys keep the extremes of their steps, token-weighted keys average per step.
"""

import pytest
import torch
from conftest import preference_rows
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.trainer import METRIC_KEYS, METRICS


def common(tmp_path, name):
    return dict(
        output_dir=str(tmp_path / name), per_device_train_batch_size=3, per_device_eval_batch_size=3, max_steps=2,
        logging_steps=2, learning_rate=1e-2, bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True,
        save_strategy="no", beta=0.1, seed=0,
    )  # fmt: skip


def run(trainer):
    trainer.train()
    trainer.evaluate()
    train = next(h for h in trainer.state.log_history if "loss" in h)
    evaluation = next(h for h in trainer.state.log_history if "eval_loss" in h)
    return train, evaluation


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["packed", "naive"])
def test_k1_train_and_eval_logs_equal_trl(tokenizer, make_model, tmp_path, shared_prefix):
    rows = preference_rows(n=9, k_max=1)
    pairs = [{**row, "rejected": row["rejected"][0]} for row in rows]
    dpo = DPOTrainer(
        model=make_model(seed=1), ref_model=make_model(seed=2), args=DPOConfig(**common(tmp_path, "dpo")),
        train_dataset=Dataset.from_list(pairs[:6]), eval_dataset=Dataset.from_list(pairs[6:]), processing_class=tokenizer,
    )  # fmt: skip
    ours = DynamicPOTrainer(
        model=make_model(seed=1),
        ref_model=make_model(seed=2),
        args=DynamicPOConfig(**common(tmp_path, "ours"), shared_prefix=shared_prefix, boundary_selection=False,
                             dynamic_beta=False),  # fmt: skip
        train_dataset=Dataset.from_list(rows[:6]),
        eval_dataset=Dataset.from_list(rows[6:]),
        processing_class=tokenizer,
    )
    assert ours.data_collator.shared_prefix is shared_prefix
    (dpo_train, dpo_eval), (our_train, our_eval) = run(dpo), run(ours)
    for trl_logs, our_logs in ((dpo_train, our_train), (dpo_eval, our_eval)):
        keys = set(trl_logs) - {"epoch", "step"} - {k for k in trl_logs if k.endswith(("runtime", "per_second"))}
        assert {"entropy", "num_tokens", "logits/chosen", "mean_token_accuracy"} & {k.removeprefix("eval_") for k in keys}
        assert keys <= set(our_logs), keys - set(our_logs)
        for key in keys:
            assert our_logs[key] == pytest.approx(trl_logs[key], abs=1e-5, rel=1e-4), key
    # num_tokens counts the training sequences of both steps (prompt + completion, chosen and rejected rows).
    assert our_train["num_tokens"] == our_eval["eval_num_tokens"] > 0


def test_metric_table():
    keys = [key for key, _, _ in METRICS]
    assert len(keys) == len(set(keys)) and tuple(keys) == METRIC_KEYS
    reductions = {key: reduction for key, _, reduction in METRICS}
    assert reductions["dynamicpo/beta_min"] == "min" and reductions["dynamicpo/beta_max"] == "max"
    assert reductions["entropy"] == "tokens" and reductions["num_tokens"] == "total"


def test_reductions_over_a_logging_period(tokenizer, make_model, make_config):
    """Two steps logged together: min / max over the steps' extremes, means of the steps' values."""
    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(seed=3), args=make_config(per_device_train_batch_size=4),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )  # fmt: skip
    rows = [trainer.train_dataset[i] for i in range(8)]
    trainer.model.train()
    with torch.no_grad():
        for part in (rows[:4], rows[4:]):
            trainer.compute_loss(trainer.model, trainer.data_collator(part))
    steps = [{key: float(value) for key, value in step.items()} for step in trainer._step_metrics["train"]]
    trainer.log({})
    logged = trainer.state.log_history[-1]
    assert trainer._step_metrics["train"] == []
    assert logged["dynamicpo/beta_min"] == pytest.approx(min(s["dynamicpo/beta_min"] for s in steps))
    assert logged["dynamicpo/beta_max"] == pytest.approx(max(s["dynamicpo/beta_max"] for s in steps))
    for key in ("rewards/chosen", "entropy", "logits/rejected", "dynamicpo/beta_mean"):
        assert logged[key] == pytest.approx((steps[0][key] + steps[1][key]) / 2), key
    assert logged["num_tokens"] == pytest.approx(steps[1]["num_tokens"]) and steps[1]["num_tokens"] > steps[0]["num_tokens"]


def test_answer_token_overlap_against_sets():
    """The collator's shared-token tables and the logged share, against a set computation per example."""
    from trl_dynamicpo.packing import DataCollatorForMultiNegative
    from trl_dynamicpo.trainer import _answer_token_overlap

    eos = 2
    examples = [
        {"prompt_ids": [10, 11], "chosen_ids": [5, 6, 7, eos], "rejected_ids": [[5, 9, eos], [7, 6, eos], [8, eos]]},
        {"prompt_ids": [10, 12, 13], "chosen_ids": [8, eos], "rejected_ids": [[9, eos]]},
        {"prompt_ids": [14], "chosen_ids": [4, 4, 3, eos], "rejected_ids": [[3, eos], [4, eos]]},
        # a leading token every completion shares (a space marker) is the same in every context: left out
        {"prompt_ids": [15], "chosen_ids": [1, 6, eos], "rejected_ids": [[1, 6, 7, eos], [1, 8, eos], [1, 9, eos]]},
    ]
    collator = DataCollatorForMultiNegative(pad_token_id=0, overlap_ignore_ids=(eos,))
    batch = collator(examples)
    selected = torch.tensor([[True, False, True], [True, False, False], [False, True, False], [True, True, True]])
    found, total = _answer_token_overlap(selected, batch)
    for b, ex in enumerate(examples):
        answer = [t for t in ex["chosen_ids"] if t != eos]
        if all(r[0] == answer[0] for r in ex["rejected_ids"]):
            answer = answer[1:]
        in_selected = set().union(*(set(r) for j, r in enumerate(ex["rejected_ids"]) if selected[b, j]))
        assert total[b] == len(answer)
        assert found[b] == sum(t in in_selected for t in answer), b
    # EOS is left out: an answer of EOS alone counts no token.
    assert DataCollatorForMultiNegative(pad_token_id=0, overlap_ignore_ids=(eos,))(
        [{"prompt_ids": [1], "chosen_ids": [eos], "rejected_ids": [[eos]]}]
    )["answer_token_mask"].sum() == 0


def test_collapse_diagnostics_logged(tokenizer, make_model, make_config):
    """`chosen_logp_shift` is log pi(y+) - log pi_ref(y+) of the step's examples; `answer_token_overlap` the share of
    answer tokens found in the negatives of the loss; reference-free runs log no shift."""
    from trl_dynamicpo.packing import completion_logps

    trainer = DynamicPOTrainer(
        model=make_model(), ref_model=make_model(seed=3), args=make_config(boundary_selection=False),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )  # fmt: skip
    rows = [trainer.train_dataset[i] for i in range(6)]
    batch = trainer._prepare_inputs(trainer.data_collator(rows))
    trainer.model.train()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
        policy = completion_logps(trainer.model, batch)[:, 0]
        reference = completion_logps(trainer.ref_model, batch)[:, 0]
    step = trainer._step_metrics["train"][-1]
    assert float(step["dynamicpo/chosen_logp_shift"]) == pytest.approx(float((policy - reference).mean()), abs=1e-5)
    eos = tokenizer.eos_token_id
    found = total = 0
    for row in rows:  # selection off: every negative is in the loss
        completions = [row["chosen_ids"], *row["rejected_ids"]]
        shared = next((i for i in range(len(row["chosen_ids"])) if len({tuple(c[: i + 1]) for c in completions}) > 1), 0)
        answer = [t for t in row["chosen_ids"][shared:] if t != eos]
        negatives = set().union(*map(set, row["rejected_ids"]))
        found, total = found + sum(t in negatives for t in answer), total + len(answer)
    assert float(step["dynamicpo/answer_token_overlap"]) == pytest.approx(found / total)

    free = DynamicPOTrainer(
        model=make_model(), args=make_config(multi_negative_loss="mppo"),
        train_dataset=Dataset.from_list(preference_rows()), processing_class=tokenizer,
    )  # fmt: skip
    free.model.train()
    with torch.no_grad():
        free.compute_loss(free.model, free._prepare_inputs(free.data_collator(rows)))
    assert "dynamicpo/chosen_logp_shift" not in free._step_metrics["train"][-1]
