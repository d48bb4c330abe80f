"""Packed scoring is exact on every architecture it is used for, and not used where it cannot be.

* every architecture in `tests/architectures.PACKED` (TRL's tiny-model families and their relatives, float32, tiny
  random weights): packed and naive per-completion log-probs agree within 1e-5; for the sliding-window ones the rows
  are longer than the window, and the plain block mask would be wrong;
* `PACKABLE_MODEL_TYPES` is exactly that tested set;
* convolution / state-space / linear-attention hybrids, ALiBi models and unverified architectures: naive rows, one
  warning that names the reason; where it can be shown, forced packing would indeed be wrong;
* trainer level: a sliding-window model trains packed with the naive trainer's loss and gradients, a hybrid is
  trained in naive rows and the trainer says so.
"""

import logging

import pytest
import torch
from architectures import NAIVE, PACKED, WINDOW, tiny_model
from conftest import preference_rows
from datasets import Dataset

from trl_dynamicpo import packing
from trl_dynamicpo.compat import attention_implementation
from trl_dynamicpo.packing import (
    PACKABLE_MODEL_TYPES,
    DataCollatorForMultiNegative,
    attention_windows,
    can_pack,
    completion_logps,
    ensure_fused_lm_head,
    packing_obstacle,
    resolve_shared_prefix,
)


ATOL = 1e-5
VOCAB = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def fresh_warnings():
    """transformers' `warning_once` caches messages per process: clear it so that each test sees its warning."""
    once = getattr(logging.Logger, "warning_once", None)
    if hasattr(once, "cache_clear"):
        once.cache_clear()


def random_examples(ks, seed=0):
    """Prompts of 3-9 tokens, completions of 1-4: every row but the shortest exceeds the window of 4."""
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        n = int(torch.randint(low, high + 1, (1,), generator=g))
        return torch.randint(5, VOCAB, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(3, 9), "chosen_ids": ids(1, 4), "rejected_ids": [ids(1, 4) for _ in range(k)]} for k in ks]


def packed_and_naive(model, examples):
    with torch.no_grad():
        packed = completion_logps(model, DataCollatorForMultiNegative(pad_token_id=0)(examples))
        naive = completion_logps(model, DataCollatorForMultiNegative(pad_token_id=0, shared_prefix=False)(examples))
    return packed, naive


def test_the_packable_list_is_the_tested_list():
    assert set(PACKED) == PACKABLE_MODEL_TYPES


@pytest.mark.parametrize("name", sorted(PACKED))
def test_packed_rows_give_the_naive_logprobs(name, monkeypatch):
    model = tiny_model(name, VOCAB)
    assert model.config.model_type == name and can_pack(model)
    ensure_fused_lm_head(model)
    examples = random_examples((3, 1, 2), seed=1)
    packed, naive = packed_and_naive(model, examples)
    assert packed.shape == (3, 4)
    torch.testing.assert_close(packed, naive, atol=ATOL, rtol=0)
    assert naive[:, 0].abs().min() > 0.1  # real log-probs, not zeros
    if any(window is not None for window in attention_windows(model.config).values()):
        assert min(len(ex["prompt_ids"]) + len(ex["chosen_ids"]) for ex in examples) > WINDOW
        # The windowed block mask is what makes it exact: the full block mask lets blocks see past the window.
        monkeypatch.setattr(packing, "attention_windows", lambda config: {"full_attention": None})
        unwindowed, _ = packed_and_naive(model, examples)
        assert (unwindowed - naive).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["mistral", "qwen2", "gpt_oss"])
def test_windowed_masks_with_eager_attention(name):
    """The additive float mask of `eager`, one tensor (Mistral) or one per layer type (Qwen2, GPT-OSS)."""
    model = tiny_model(name, VOCAB, attn_implementation="eager")
    ensure_fused_lm_head(model)
    packed, naive = packed_and_naive(model, random_examples((2, 4), seed=2))
    torch.testing.assert_close(packed, naive, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(NAIVE))
def test_unpackable_architectures_use_naive_rows_and_say_why(name, caplog, fresh_warnings):
    reason = NAIVE[name][2]
    model = tiny_model(name, VOCAB)
    assert not can_pack(model)
    with caplog.at_level(logging.WARNING):
        assert resolve_shared_prefix(model.config, attention_implementation(model)) is False
    assert reason in caplog.text and "naive layout" in caplog.text
    ensure_fused_lm_head(model)
    with torch.no_grad():  # naive rows work
        naive = completion_logps(
            model, DataCollatorForMultiNegative(pad_token_id=0, shared_prefix=False)(random_examples((2,)))
        )
    assert torch.isfinite(naive).all() and (naive < 0).all()


@pytest.mark.parametrize("name", ["nemotron_h", "granitemoehybrid", "qwen3_next", "bloom"])
def test_forced_packing_would_be_wrong(name):
    """What the fallback avoids: state-space layers mix the blocks of a packed row, ALiBi cannot take its mask."""
    model = tiny_model(name, VOCAB)
    ensure_fused_lm_head(model)
    examples = random_examples((3, 1), seed=3)
    if name == "bloom":
        with pytest.raises((ValueError, RuntimeError)):
            packed_and_naive(model, examples)
        return
    packed, naive = packed_and_naive(model, examples)
    assert (packed - naive).abs().max() > 1e-3


def test_obstacles():
    """Reasons, without building a model: the attention kernel, an unverified architecture, bidirectional attention."""
    from transformers import Gemma3TextConfig, LlamaConfig

    assert packing_obstacle(LlamaConfig(), "sdpa") is None
    assert "flash_attention_2" in packing_obstacle(LlamaConfig(), "flash_attention_2")
    unknown = LlamaConfig()
    unknown.model_type = "my_llama"
    assert "'my_llama' is not among" in packing_obstacle(unknown, "sdpa")
    assert "bidirectional" in packing_obstacle(Gemma3TextConfig(use_bidirectional_attention=True), "sdpa")


# ------------------------------------------------------------------------------------------------- trainer level


def make_trainer(tokenizer, tmp_path, name, shared_prefix, **overrides):
    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    args = DynamicPOConfig(
        output_dir=str(tmp_path), shared_prefix=shared_prefix, per_device_train_batch_size=6, bf16=False,
        gradient_checkpointing=False, report_to=[], use_cpu=True, beta=0.5,
    )  # fmt: skip
    return DynamicPOTrainer(
        model=tiny_model(name, len(tokenizer), seed=1, **overrides).train(),
        ref_model=tiny_model(name, len(tokenizer), seed=2, **overrides),
        args=args,
        train_dataset=Dataset.from_list(preference_rows(n=6)),
        processing_class=tokenizer,
    )


def loss_and_grads(trainer):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in trainer.model.named_parameters() if p.grad is not None}, batch


def test_sliding_window_trainer_packs_with_the_naive_loss(tokenizer, tmp_path):
    packed = make_trainer(tokenizer, tmp_path, "mistral", True)
    naive = make_trainer(tokenizer, tmp_path, "mistral", False)
    loss_p, grads_p, batch = loss_and_grads(packed)
    loss_n, grads_n, _ = loss_and_grads(naive)
    assert "segment_ids" in batch and int(batch["position_ids"].max()) >= WINDOW
    torch.testing.assert_close(loss_p, loss_n, atol=ATOL, rtol=0)
    assert grads_p.keys() == grads_n.keys() and grads_p
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_n[name], atol=ATOL, rtol=1e-4)


def test_hybrid_trainer_uses_naive_rows_and_says_so(tokenizer, tmp_path, caplog, fresh_warnings):
    with caplog.at_level(logging.WARNING):
        trainer = make_trainer(tokenizer, tmp_path, "lfm2", True)
    assert trainer.data_collator.shared_prefix is False
    assert "'conv' layers" in caplog.text and "shared_prefix=True" in caplog.text
    loss, grads, batch = loss_and_grads(trainer)
    assert "attention_mask" in batch and torch.isfinite(loss) and grads


def test_scoring_a_hybrid_uses_naive_rows(tokenizer, caplog, fresh_warnings):
    from trl_dynamicpo.scoring import score_completions

    model = tiny_model("falcon_h1", len(tokenizer))
    prompts = ["The user listened to Muse, Air. Next:", "The user listened to Moby. Next:"]
    completions = [[" Placebo", " Shakira", " Slayer"], [" Madonna", " The Cure"]]
    with caplog.at_level(logging.WARNING):
        packed = score_completions(model, tokenizer, prompts, completions, show_progress=False)
    assert "'hybrid' layers" in caplog.text
    naive = score_completions(model, tokenizer, prompts, completions, shared_prefix=False, show_progress=False)
    assert packed == naive
