"""MoE router auxiliary loss: added and logged as `trl.DPOTrainer` does, in the packed and naive layouts.

* K = 1 against TRL's DPOTrainer (same data, same seeds; Qwen3-MoE, Mixtral, GPT-OSS): loss (which includes
  `router_aux_loss_coef * aux_loss`), `aux_loss`, every metric TRL logs, and the gradients are equal;
* K > 1: packed and naive rows give the same aux loss (a prompt position counts once per completion sharing it);
* no aux loss without router logits (coefficient 0), and a config that asks for router logits works packed.
"""

import pytest
import torch
from architectures import tiny_model
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.packing import DataCollatorForMultiNegative, ensure_fused_lm_head, forward_completions


COEF = 0.5  # large, so that a wrong aux loss shows in the loss
ROWS = [
    {"prompt": "The user listened to Muse, Air. Next:", "chosen": " Placebo", "rejected": " Shakira"},
    {"prompt": "The user listened to Moby. Next:", "chosen": " The Cure, Pixies", "rejected": " Slayer"},
    {"prompt": "The user listened to Björk, Enigma and Madonna. Next:", "chosen": " Air", "rejected": " Nirvana, Muse"},
]


def common_args(**overrides):
    args = dict(
        per_device_train_batch_size=3, bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True, beta=0.1,
        router_aux_loss_coef=COEF,
    )  # fmt: skip
    return {**args, **overrides}


def first_step(trainer):
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def logged(trainer):
    """What the trainer logs for the step just taken (the train logs of `Trainer.log`)."""
    trainer.log({})
    return trainer.state.log_history[-1]


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["packed", "naive"])
@pytest.mark.parametrize("name", ["qwen3_moe", "mixtral", "gpt_oss"])
def test_k1_loss_aux_loss_and_metrics_equal_trl(tokenizer, tmp_path, name, shared_prefix):
    def models():
        return tiny_model(name, len(tokenizer), seed=1), tiny_model(name, len(tokenizer), seed=2)

    policy, reference = models()
    dpo = DPOTrainer(model=policy, ref_model=reference, args=DPOConfig(str(tmp_path / "dpo"), **common_args()),
                     train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)  # fmt: skip
    policy, reference = models()
    ours = DynamicPOTrainer(
        model=policy,
        ref_model=reference,
        args=DynamicPOConfig(str(tmp_path / "ours"), shared_prefix=shared_prefix, boundary_selection=False,
                             dynamic_beta=False, **common_args()),  # fmt: skip
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    assert dpo.aux_loss_enabled and ours.aux_loss_enabled and ours.router_aux_loss_coef == COEF
    assert ours.data_collator.shared_prefix is shared_prefix
    dpo_loss, dpo_grads = first_step(dpo)
    our_loss, our_grads = first_step(ours)
    dpo_logs, our_logs = logged(dpo), logged(ours)
    assert dpo_logs["aux_loss"] > 0.5  # about 1 for a balanced router: a real term of the loss
    torch.testing.assert_close(our_loss, dpo_loss, atol=1e-5, rtol=1e-5)
    trl_keys = set(dpo_logs) - {"epoch", "step"}
    assert trl_keys <= set(our_logs), trl_keys - set(our_logs)
    for key in trl_keys:
        assert our_logs[key] == pytest.approx(dpo_logs[key], abs=1e-5, rel=1e-5), key
    router_grads = [n for n in dpo_grads if "router" in n or "gate" in n]
    assert router_grads
    for n in dpo_grads:
        torch.testing.assert_close(our_grads[n], dpo_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def random_examples(vocab_size, ks, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        n = int(torch.randint(low, high + 1, (1,), generator=g))
        return torch.randint(5, vocab_size, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(3, 9), "chosen_ids": ids(1, 4), "rejected_ids": [ids(1, 4) for _ in range(k)]} for k in ks]


@pytest.mark.parametrize("name", ["qwen3_moe", "gpt_oss"])
def test_packed_and_naive_aux_loss_agree_for_many_negatives(name):
    """Against the naive rows' aux loss, itself checked against TRL's fused head on the same rows."""
    model = tiny_model(name, 64)
    ensure_fused_lm_head(model)
    examples = random_examples(64, ks=(3, 1, 5), seed=4)
    naive_batch = DataCollatorForMultiNegative(pad_token_id=0, shared_prefix=False)(examples)
    with torch.no_grad():
        packed = forward_completions(model, DataCollatorForMultiNegative(pad_token_id=0)(examples), router_aux_loss=True)
        naive = forward_completions(model, naive_batch, router_aux_loss=True)
        # TRL's fused head computes the aux loss itself from the 2-D mask of naive rows.
        trl_aux = model(input_ids=naive_batch["input_ids"], attention_mask=naive_batch["attention_mask"],
                        shift_labels=naive_batch["shift_labels"], fused_lm_head=True, output_router_logits=True).aux_loss  # fmt: skip
    torch.testing.assert_close(naive.aux_loss, trl_aux, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(packed.aux_loss, naive.aux_loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(packed.logps, naive.logps, atol=1e-5, rtol=0)
    # Counting the shared prompt once per packed row instead would be a different number.
    assert naive.aux_loss > 0.5


def test_output_router_logits_in_the_config_works_packed(tokenizer, tmp_path):
    """A config that always returns router logits used to crash the packed forward (the 4-D mask reached the
    load-balancing loss); with the trainer's coefficient 0 there is no aux term, as in TRL."""
    model = tiny_model("qwen3_moe", len(tokenizer), seed=1, output_router_logits=True)
    trainer = DynamicPOTrainer(
        model=model, ref_model=tiny_model("qwen3_moe", len(tokenizer), seed=2, output_router_logits=True),
        args=DynamicPOConfig(str(tmp_path), **common_args(router_aux_loss_coef=0.0)),
        train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer,
    )  # fmt: skip
    assert trainer.data_collator.shared_prefix and not trainer.aux_loss_enabled
    loss, grads = first_step(trainer)
    assert torch.isfinite(loss) and grads
    assert "aux_loss" not in logged(trainer)
