"""PEFT prompt learning (prompt tuning, P-tuning, prefix tuning, cartridges) in the packed and naive layouts.

* per-completion log-probs: packed == naive == a slow reference (PEFT's own forward on each prompt+completion row,
  plain logits), also with a sliding window shorter than the rows, and with the adapter disabled (the reference);
* MoE: the router aux loss counts the virtual tokens as TRL does, packed == naive;
* trainer level, K = 1: loss and gradients equal `trl.DPOTrainer`'s with the same `peft_config`;
* prompt-learning methods the scoring does not implement are refused with their name.
"""

import copy

import pytest
import torch
from architectures import tiny_model
from datasets import Dataset
from peft import (
    CartridgeConfig,
    MultitaskPromptTuningConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from trl import DPOConfig, DPOTrainer

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.packing import DataCollatorForMultiNegative, ensure_fused_lm_head, forward_completions


ATOL = 1e-5
VOCAB = 64
VIRTUAL = 3
PEFT_CONFIGS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL),
    "p_tuning": lambda: PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL, encoder_hidden_size=8),
    "prefix_tuning": lambda: PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL),
    "cartridge": lambda: CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_examples(ks, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        n = int(torch.randint(low, high + 1, (1,), generator=g))
        return torch.randint(5, VOCAB, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(3, 9), "chosen_ids": ids(1, 4), "rejected_ids": [ids(1, 4) for _ in range(k)]} for k in ks]


def prompt_learning_model(arch, method, seed=0):
    """A tiny model with a prompt-learning adapter whose virtual tokens matter (random, not PEFT's small init)."""
    base = tiny_model(arch, VOCAB, seed=seed)
    reference = copy.deepcopy(base)
    ensure_fused_lm_head(base)
    torch.manual_seed(seed)
    model = get_peft_model(base, PEFT_CONFIGS[method]())
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0.0, 1.0)
    return model.eval(), reference


def slow_logps(model, example):
    """log pi(completion | prompt) from PEFT's own forward on one prompt+completion row (plain logits)."""
    out = []
    with torch.no_grad():
        for comp in [example["chosen_ids"], *example["rejected_ids"]]:
            ids = example["prompt_ids"] + comp
            logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids))).logits
            logprobs = logits[0, -len(ids) :].double().log_softmax(-1)  # prompt tuning prepends virtual positions
            start = len(example["prompt_ids"])
            out.append(sum(float(logprobs[start - 1 + t, tok]) for t, tok in enumerate(comp)))
    return torch.tensor(out, dtype=torch.float32)


def both_layouts(model, examples, **kwargs):
    with torch.no_grad():
        packed = forward_completions(model, DataCollatorForMultiNegative(pad_token_id=0)(examples), **kwargs)
        naive = forward_completions(
            model, DataCollatorForMultiNegative(pad_token_id=0, shared_prefix=False)(examples), **kwargs
        )
    return packed, naive


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral: a window of 4, shorter than the rows
@pytest.mark.parametrize("method", sorted(PEFT_CONFIGS))
def test_packed_naive_and_slow_reference_agree(arch, method):
    model, base = prompt_learning_model(arch, method)
    examples = random_examples((3, 1, 2), seed=1)
    packed, naive = both_layouts(model, examples)
    torch.testing.assert_close(packed.logps, naive.logps, atol=ATOL, rtol=0)
    for b, ex in enumerate(examples):
        n = 1 + len(ex["rejected_ids"])
        torch.testing.assert_close(naive.logps[b, :n], slow_logps(model, ex), atol=ATOL, rtol=0)
    # The virtual tokens change the scores, and with the adapter disabled the scores are the base model's.
    base_logps = torch.stack([torch.nn.functional.pad(slow_logps(base, ex), (0, 3 - len(ex["rejected_ids"])))
                              for ex in examples])  # fmt: skip
    assert (naive.logps - base_logps).abs().max() > 1e-3
    with model.disable_adapter():
        off_packed, off_naive = both_layouts(model, examples)
    torch.testing.assert_close(off_packed.logps, base_logps, atol=ATOL, rtol=0)
    torch.testing.assert_close(off_naive.logps, base_logps, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_moe_aux_loss_with_virtual_tokens(method):
    model, _ = prompt_learning_model("qwen3_moe", method)
    packed, naive = both_layouts(model, random_examples((3, 1, 2), seed=2), router_aux_loss=True)
    torch.testing.assert_close(packed.logps, naive.logps, atol=ATOL, rtol=0)
    torch.testing.assert_close(packed.aux_loss, naive.aux_loss, atol=1e-6, rtol=1e-6)


ROWS = [
    {"prompt": "The user listened to Muse, Air. Next:", "chosen": " Placebo", "rejected": " Shakira"},
    {"prompt": "The user listened to Moby. Next:", "chosen": " The Cure, Pixies", "rejected": " Slayer"},
    {"prompt": "The user listened to Björk, Enigma and Madonna. Next:", "chosen": " Air", "rejected": " Nirvana, Muse"},
]


def first_step(trainer):
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["packed", "naive"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_k1_trainer_equals_trl(tokenizer, tmp_path, method, shared_prefix):
    common = dict(per_device_train_batch_size=3, bf16=False, gradient_checkpointing=False, report_to=[],
                  use_cpu=True, beta=1.0)  # fmt: skip

    def peft_config():
        config = PEFT_CONFIGS[method]()
        config.num_virtual_tokens = VIRTUAL
        return config

    def trainer(cls, args):
        torch.manual_seed(5)  # same virtual-token initialisation in both trainers
        return cls(model=tiny_model("qwen2", len(tokenizer), seed=1), args=args, peft_config=peft_config(),
                   train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)  # fmt: skip

    dpo = trainer(DPOTrainer, DPOConfig(str(tmp_path / "dpo"), **common))
    ours = trainer(
        DynamicPOTrainer,
        DynamicPOConfig(str(tmp_path / "ours"), shared_prefix=shared_prefix, boundary_selection=False,
                        dynamic_beta=False, **common),  # fmt: skip
    )
    assert ours.data_collator.shared_prefix is shared_prefix
    for t in (dpo, ours):  # move the policy away from the adapter-off reference
        with torch.no_grad():
            for parameter in t.model.parameters():
                if parameter.requires_grad:
                    parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(7)))
    dpo_loss, dpo_grads = first_step(dpo)
    our_loss, our_grads = first_step(ours)
    torch.testing.assert_close(our_loss, dpo_loss, atol=ATOL, rtol=1e-5)
    assert dpo_grads.keys() == our_grads.keys() and dpo_grads
    assert all(float(grad.abs().max()) > 0 for grad in dpo_grads.values())  # the virtual tokens shape the loss
    for name in dpo_grads:
        torch.testing.assert_close(our_grads[name], dpo_grads[name], atol=ATOL, rtol=1e-4, msg=name)


def test_unsupported_prompt_learning_is_refused():
    base = tiny_model("llama", VOCAB)
    ensure_fused_lm_head(base)
    config = MultitaskPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL, num_tasks=2)
    model = get_peft_model(base, config)
    batch = DataCollatorForMultiNegative(pad_token_id=0)(random_examples((1,)))
    with pytest.raises(ValueError, match="MULTITASK_PROMPT_TUNING is not supported"):
        forward_completions(model, batch)
