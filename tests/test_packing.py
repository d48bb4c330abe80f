"""Shared-prefix packing: the packed layout scores every completion exactly as the naive one does.

Layout:
* collator layouts on a hand-made example (packed and naive), edge cases (K = 1, K = 0, pad_to_multiple_of,
  reference columns) and `block_attention_mask` against a hand-written matrix;
* per-completion log-probs, packed vs naive vs an independent slow computation (plain logits, one
  prompt+completion at a time), for Qwen2 and Llama, eager and sdpa, batch > 1, K varying across rows;
* trainer level: `shared_prefix` True and False give the same loss and gradients, with an explicit reference
  model and with a PEFT LoRA adapter turned off as the reference, with and without precomputed reference log-probs;
* the fallback to naive rows for attention kernels that take no 4-D mask (architectures: tests/test_architectures.py);
* per-completion statistics (entropy, mean logit, top-1 hits, token counts) against a slow reference, and the
  deprecated CPU compact-head context manager (a no-op).
"""

import copy
import logging
import types

import pytest
import torch

from trl_dynamicpo.packing import (
    DataCollatorForMultiNegative,
    block_attention_mask,
    can_pack,
    completion_logps,
    ensure_fused_lm_head,
)
from trl_dynamicpo.tiny import build_tiny_model, build_tokenizer


ATOL = 1e-5
PAD = 0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is as fast, and does not stall at barriers on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# A hand-made example: prompt of 3 tokens, chosen of 2, negatives of 1 and 3 tokens.
HAND = {"prompt_ids": [10, 11, 12], "chosen_ids": [20, 21], "rejected_ids": [[30], [40, 41, 42]]}


def random_examples(vocab_size, ks, seed=0):
    """Token-id examples with K negatives each (K from `ks`), prompts of 3-9 tokens, completions of 1-4 tokens."""
    g = torch.Generator().manual_seed(seed)

    def ids(low, high):
        n = int(torch.randint(low, high + 1, (1,), generator=g))
        return torch.randint(5, vocab_size, (n,), generator=g).tolist()

    return [{"prompt_ids": ids(3, 9), "chosen_ids": ids(1, 4), "rejected_ids": [ids(1, 4) for _ in range(k)]} for k in ks]


def slow_logps(model, example):
    """log pi(completion | prompt) for the chosen answer and each negative, one plain forward per sequence."""
    out = []
    with torch.no_grad():
        for comp in [example["chosen_ids"], *example["rejected_ids"]]:
            ids = torch.tensor([example["prompt_ids"] + comp])
            logprobs = model(input_ids=ids).logits[0].double().log_softmax(-1)
            start = len(example["prompt_ids"])
            out.append(sum(float(logprobs[start - 1 + t, tok]) for t, tok in enumerate(comp)))
    return out


# ------------------------------------------------------------------------------------------------ collator layout


def test_packed_layout_hand_example():
    batch = DataCollatorForMultiNegative(pad_token_id=PAD)([HAND])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 12, 30, 12, 40, 41, 42]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 2, 3, 4, 5]]
    assert batch["shift_labels"].tolist() == [[-100, -100, 20, 21, -100, 30, -100, 40, 41, 42, -100]]
    assert batch["completion_slot"].tolist() == [[-1, -1, 0, 0, -1, 1, -1, 2, 2, 2, -1]]
    assert batch["segment_ids"].tolist() == [[0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 3]]
    assert batch["rejected_mask"].tolist() == [[True, True]]
    assert "attention_mask" not in batch


def test_naive_layout_hand_example():
    batch = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=False)([HAND])
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 0], [10, 11, 12, 30, 0, 0], [10, 11, 12, 40, 41, 42]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert batch["shift_labels"].tolist() == [
        [-100, -100, 20, 21, -100, -100],
        [-100, -100, 30, -100, -100, -100],
        [-100, -100, 40, 41, 42, -100],
    ]
    assert batch["completion_slot"].tolist() == [[-1, -1, 0, 0, -1, -1], [-1, -1, 1, -1, -1, -1], [-1, -1, 2, 2, 2, -1]]
    assert batch["position_ids"][2].tolist() == [0, 1, 2, 3, 4, 5]
    assert "segment_ids" not in batch


def test_varying_k_padding_and_reference_columns():
    examples = [
        {**HAND, "ref_chosen_logps": -1.0, "ref_rejected_logps": [-2.0, -3.0]},
        {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [[9]], "ref_chosen_logps": -4.0, "ref_rejected_logps": [-5.0]},
    ]
    for shared in (True, False):
        batch = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared)(examples)
        assert batch["rejected_mask"].tolist() == [[True, True], [True, False]]
        assert batch["ref_chosen_logps"].tolist() == [-1.0, -4.0]
        assert batch["ref_rejected_logps"].tolist() == [[-2.0, -3.0], [-5.0, 0.0]]
        # Slots are example * (K_max + 1) + c: the second example's chosen is slot 3, its negative slot 4.
        assert sorted(set(batch["completion_slot"].flatten().tolist()) - {-1}) == [0, 1, 2, 3, 4]
        assert batch["input_ids"].shape[0] == (2 if shared else 5)
    packed = DataCollatorForMultiNegative(pad_token_id=PAD)(examples)
    # One-token prompt: the packed row holds no prompt token of its own, only the copies heading each block.
    assert packed["input_ids"][1].tolist()[:4] == [7, 8, 7, 9]
    assert packed["segment_ids"][1].tolist() == [1, 1, 2, 2] + [-1] * 7
    assert packed["position_ids"][1].tolist()[:4] == [0, 1, 0, 1]


@pytest.mark.parametrize("shared", [True, False], ids=["packed", "naive"])
def test_negative_slots_fix_the_width_and_add_no_tokens(shared):
    """`negative_slots` widens every per-negative tensor to that many columns (padding, masked out) without adding a
    token to the rows; a batch with more negatives still gets them all; cached reference columns of another width
    are cut or padded to it."""
    examples = [
        {**HAND, "ref_chosen_logps": -1.0, "ref_rejected_logps": [-2.0, -3.0]},
        {"prompt_ids": [7], "chosen_ids": [8], "rejected_ids": [[9]], "ref_chosen_logps": -4.0,
         "ref_rejected_logps": [-5.0, 0.0, 0.0, 0.0, 0.0, 0.0]},  # a cache written with 6 slots
    ]  # fmt: skip
    plain = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared)(examples)
    fixed = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared, negative_slots=4)(examples)
    for key in ("input_ids", "position_ids", "shift_labels", "segment_ids" if shared else "attention_mask"):
        assert torch.equal(fixed[key], plain[key]), key
    assert fixed["rejected_mask"].tolist() == [[True, True, False, False], [True, False, False, False]]
    assert fixed["ref_rejected_logps"].tolist() == [[-2.0, -3.0, 0.0, 0.0], [-5.0, 0.0, 0.0, 0.0]]
    assert fixed["answer_token_in_negative"].shape[:2] == (2, 4)
    assert torch.equal(fixed["answer_token_in_negative"][:, :2], plain["answer_token_in_negative"])
    # Slots are example * (K_max + 1) + c with K_max = 4: the second example's chosen is slot 5, its negative 6.
    assert sorted(set(fixed["completion_slot"].flatten().tolist()) - {-1}) == [0, 1, 2, 5, 6]
    wide = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared, negative_slots=1)(examples)
    assert wide["rejected_mask"].shape == (2, 2) and wide["ref_rejected_logps"].shape == (2, 2)


def test_negative_slots_leave_the_scores_unchanged(tokenizer):
    model = build_tiny_model(tokenizer, seed=5).eval()
    ensure_fused_lm_head(model)
    examples = random_examples(len(tokenizer), ks=(2, 1, 3), seed=4)
    with torch.no_grad():
        plain = completion_logps(model, DataCollatorForMultiNegative(pad_token_id=PAD)(examples))
        fixed = completion_logps(model, DataCollatorForMultiNegative(pad_token_id=PAD, negative_slots=6)(examples))
    assert plain.shape == (3, 4) and fixed.shape == (3, 7)
    torch.testing.assert_close(fixed[:, :4], plain, atol=1e-6, rtol=0)
    assert (fixed[:, 4:] == 0).all()


def test_k_equals_one():
    examples = [{"prompt_ids": [3, 4], "chosen_ids": [5], "rejected_ids": [[6, 7]]}] * 3
    for shared in (True, False):
        batch = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared)(examples)
        assert batch["rejected_mask"].shape == (3, 1) and batch["rejected_mask"].all()
        assert batch["input_ids"].shape[0] == (3 if shared else 6)
    packed = DataCollatorForMultiNegative(pad_token_id=PAD)(examples)
    assert packed["input_ids"][0].tolist() == [3, 4, 5, 4, 6, 7]


def test_k_equals_zero_for_scoring():
    """Scoring a prompt with a single completion: no negatives at all, or fewer than other rows."""
    only = [{"prompt_ids": [3, 4], "chosen_ids": [5, 6], "rejected_ids": []}]
    for shared in (True, False):
        batch = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared)(only)
        assert batch["rejected_mask"].shape == (1, 0)
        assert batch["input_ids"].tolist() == [[3, 4, 5, 6]]  # one block: packed and naive rows coincide
        assert batch["completion_slot"].tolist() == [[-1, 0, 0, -1]]
    mixed = [*only, {"prompt_ids": [3], "chosen_ids": [5], "rejected_ids": [[6], [7]]}]
    batch = DataCollatorForMultiNegative(pad_token_id=PAD)(mixed)
    assert batch["rejected_mask"].tolist() == [[False, False], [True, True]]


@pytest.mark.parametrize("shared", [True, False])
def test_pad_to_multiple_of(shared):
    examples = random_examples(50, ks=(2, 1, 3), seed=1)
    plain = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared)(examples)
    padded = DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared, pad_to_multiple_of=16)(examples)
    length = plain["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] % 16 == 0 and padded["input_ids"].shape[1] >= length
    fill = {"input_ids": PAD, "position_ids": 0, "shift_labels": -100, "completion_slot": -1}
    fill.update({"segment_ids": -1} if shared else {"attention_mask": 0})
    for key, value in fill.items():
        assert torch.equal(padded[key][:, :length], plain[key]), key
        assert (padded[key][:, length:] == value).all(), key


# ------------------------------------------------------------------------------------------- block attention mask


def test_block_attention_mask_hand_example():
    # prompt (2 tokens), chosen block (2), negative block (2), one padding position.
    segments = torch.tensor([[0, 0, 1, 1, 2, 2, -1]])
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],  # the negative block sees the prompt and itself, never the chosen block
            [1, 1, 0, 0, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    sdpa = block_attention_mask(segments, "sdpa", torch.float32)
    assert sdpa.dtype == torch.bool and sdpa.shape == (1, 1, 7, 7)
    assert torch.equal(sdpa[0, 0, :6], expected)
    # Padding queries (whose outputs are never read) attend at least to themselves, so no softmax row is empty,
    # and never to a completion block.
    assert sdpa[0, 0, 6, 6] and not sdpa[0, 0, 6, 2:6].any()
    eager = block_attention_mask(segments, "eager", torch.float32)
    assert eager.dtype == torch.float32
    assert torch.equal(eager[0, 0] == 0, sdpa[0, 0])
    assert (eager[0, 0][~sdpa[0, 0]] == torch.finfo(torch.float32).min).all()


def test_block_attention_mask_collated_batch():
    """On a collated batch: causal, blocks isolated from one another, every block sees the whole prompt; no real
    query sees padding, and every padding query sees itself."""
    batch = DataCollatorForMultiNegative(pad_token_id=PAD)(random_examples(50, ks=(3, 1), seed=2))
    seg = batch["segment_ids"]
    mask = block_attention_mask(seg, "sdpa", torch.float32)[:, 0]
    for r in range(seg.shape[0]):
        for q in range(seg.shape[1]):
            for k in range(seg.shape[1]):
                sq, sk = int(seg[r, q]), int(seg[r, k])
                if sq >= 0:
                    assert bool(mask[r, q, k]) == (sk >= 0 and k <= q and (sk == 0 or sk == sq)), (r, q, k)
                elif k == q:
                    assert mask[r, q, k]
                elif sk > 0:
                    assert not mask[r, q, k]


# ------------------------------------------------------------------------------------ log-probs, packed vs naive


@pytest.fixture(scope="module")
def packing_tokenizer():
    texts = [f"user {i} listened to artist {i * 7 % 13} and then artist {i * 5 % 11}." for i in range(40)]
    return build_tokenizer(texts, vocab_size=300)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_packed_matches_naive_and_slow(packing_tokenizer, arch, attn):
    model = build_tiny_model(packing_tokenizer, arch=arch, attn_implementation=attn, seed=3).eval()
    reference = copy.deepcopy(model)  # never patched: plain logits
    ensure_fused_lm_head(model)
    ks = (3, 1, 5, 2)
    examples = random_examples(len(packing_tokenizer), ks=ks, seed=4)
    with torch.no_grad():
        packed = completion_logps(model, DataCollatorForMultiNegative(pad_token_id=packing_tokenizer.pad_token_id)(examples))
        naive = completion_logps(
            model, DataCollatorForMultiNegative(pad_token_id=packing_tokenizer.pad_token_id, shared_prefix=False)(examples)
        )
    assert packed.shape == naive.shape == (len(ks), max(ks) + 1)
    assert packed.dtype == torch.float32
    torch.testing.assert_close(packed, naive, atol=ATOL, rtol=0)
    for b, (ex, k) in enumerate(zip(examples, ks)):
        expected = torch.tensor(slow_logps(reference, ex), dtype=torch.float32)
        torch.testing.assert_close(packed[b, : k + 1], expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(naive[b, : k + 1], expected, atol=ATOL, rtol=0)
        assert (packed[b, k + 1 :] == 0).all() and (naive[b, k + 1 :] == 0).all()  # padding negatives


def test_packed_scoring_with_padding_and_k_zero(packing_tokenizer):
    model = build_tiny_model(packing_tokenizer, attn_implementation="sdpa", seed=5).eval()
    reference = copy.deepcopy(model)
    ensure_fused_lm_head(model)
    examples = random_examples(len(packing_tokenizer), ks=(0, 2), seed=6)
    collate = DataCollatorForMultiNegative(pad_token_id=packing_tokenizer.pad_token_id, pad_to_multiple_of=32)
    with torch.no_grad():
        logps = completion_logps(model, collate(examples))
    for b, ex in enumerate(examples):
        n = 1 + len(ex["rejected_ids"])
        torch.testing.assert_close(logps[b, :n], torch.tensor(slow_logps(reference, ex), dtype=torch.float32),
                                   atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------- trainer level


def preference_rows():
    names = [f" artist {i}" for i in range(12)]
    rows = []
    for i, k in enumerate((3, 1, 4, 2)):
        prompt = f"user {i} listened to artist {i + 1} and artist {(3 * i) % 11}. Next:"
        rows.append({"prompt": prompt, "chosen": names[i], "rejected": [names[(i + 1 + j) % 12] for j in range(k)]})
    return rows


def make_trainer(packing_tokenizer, tmp_path, *, shared_prefix, reference, precompute):
    from datasets import Dataset
    from peft import LoraConfig

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    model = build_tiny_model(packing_tokenizer, attn_implementation="sdpa", seed=7)
    kwargs = {}
    if reference == "ref_model":
        kwargs["ref_model"] = build_tiny_model(packing_tokenizer, attn_implementation="sdpa", seed=8)
    else:
        # Random LoRA weights (not the default zero B), so that the policy differs from the adapter-off reference.
        kwargs["peft_config"] = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_dropout=0.0
        )
    args = DynamicPOConfig(
        output_dir=str(tmp_path),
        shared_prefix=shared_prefix,
        precompute_ref_log_probs=precompute,
        per_device_train_batch_size=4,
        bf16=False,
        gradient_checkpointing=False,
        report_to=[],
        use_cpu=True,
        beta=0.5,
    )
    return DynamicPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(preference_rows()), processing_class=packing_tokenizer, **kwargs
    )


def loss_and_grads(trainer):
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    assert any(float(g.abs().max()) > 0 for g in grads.values())
    return loss.detach(), grads, batch


@pytest.mark.parametrize("precompute", [False, True], ids=["live-ref", "precomputed-ref"])
@pytest.mark.parametrize("reference", ["ref_model", "peft"])
def test_trainer_shared_prefix_same_loss_and_grads(packing_tokenizer, tmp_path, reference, precompute):
    results = {}
    for shared in (True, False):
        trainer = make_trainer(packing_tokenizer, tmp_path, shared_prefix=shared, reference=reference, precompute=precompute)
        assert trainer.data_collator.shared_prefix is shared
        results[shared] = loss_and_grads(trainer)
        if precompute:
            assert "ref_chosen_logps" in results[shared][2]
            assert trainer.ref_model is None or reference == "ref_model"
    (loss_p, grads_p, batch_p), (loss_n, grads_n, batch_n) = results[True], results[False]
    assert "segment_ids" in batch_p and "attention_mask" in batch_n
    assert float(loss_p) > 0.0 and torch.isfinite(loss_p)
    torch.testing.assert_close(loss_p, loss_n, atol=ATOL, rtol=0)
    assert grads_p.keys() == grads_n.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_n[name], atol=ATOL, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    if precompute:
        # The precomputed reference log-probs are those of the other layout, too.
        torch.testing.assert_close(batch_p["ref_chosen_logps"], batch_n["ref_chosen_logps"], atol=ATOL, rtol=0)
        torch.testing.assert_close(batch_p["ref_rejected_logps"], batch_n["ref_rejected_logps"], atol=ATOL, rtol=0)


def test_precomputed_reference_equals_live_reference(packing_tokenizer, tmp_path):
    live = make_trainer(packing_tokenizer, tmp_path, shared_prefix=True, reference="ref_model", precompute=False)
    stored = make_trainer(packing_tokenizer, tmp_path, shared_prefix=True, reference="ref_model", precompute=True)
    loss_live, grads_live, batch = loss_and_grads(live)
    loss_stored, grads_stored, stored_batch = loss_and_grads(stored)
    torch.testing.assert_close(loss_live, loss_stored, atol=ATOL, rtol=0)
    ref_chosen, ref_rejected = live.compute_ref_log_probs(live.ref_model, batch)
    torch.testing.assert_close(ref_chosen, stored_batch["ref_chosen_logps"], atol=ATOL, rtol=0)
    valid = batch["rejected_mask"]
    torch.testing.assert_close(ref_rejected[valid], stored_batch["ref_rejected_logps"][valid], atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------- fallback


def fake_model(impl, model_type="qwen2"):
    return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type, _attn_implementation=impl))


def test_can_pack():
    assert can_pack(fake_model("eager")) and can_pack(fake_model("sdpa"))
    assert not can_pack(fake_model("flash_attention_2"))
    assert can_pack(types.SimpleNamespace(module=fake_model("sdpa")))  # DDP-wrapped


def test_flash_attention_falls_back_to_naive_rows(caplog):
    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    once = getattr(logging.Logger, "warning_once", None)  # transformers' per-message cache: warn again here
    if hasattr(once, "cache_clear"):
        once.cache_clear()
    resolve = DynamicPOTrainer._resolve_shared_prefix
    args = DynamicPOConfig(output_dir="unused", report_to=[], bf16=False, use_cpu=True)
    with caplog.at_level(logging.WARNING):
        assert resolve(fake_model("flash_attention_2"), args) is False
    assert "flash_attention_2" in caplog.text and "shared_prefix" in caplog.text
    assert resolve(fake_model("eager"), args) is True
    assert resolve(fake_model("sdpa"), args) is True
    assert resolve(types.SimpleNamespace(module=fake_model("flash_attention_3")), args) is False  # DDP-wrapped
    off = DynamicPOConfig(output_dir="unused", report_to=[], bf16=False, use_cpu=True, shared_prefix=False)
    assert resolve(fake_model("sdpa"), off) is False


def test_trainer_with_unpackable_attention_uses_naive_rows(packing_tokenizer, tmp_path):
    """The trainer builds a naive collator for such a model, and its loss is the packed trainer's."""
    from datasets import Dataset

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    def build(impl):
        model = build_tiny_model(packing_tokenizer, attn_implementation="sdpa", seed=7)
        ref = build_tiny_model(packing_tokenizer, attn_implementation="sdpa", seed=8)
        model.config._attn_implementation = impl  # what a flash-attention model reports
        args = DynamicPOConfig(output_dir=str(tmp_path), report_to=[], bf16=False, use_cpu=True,
                               gradient_checkpointing=False, per_device_train_batch_size=4)
        trainer = DynamicPOTrainer(model=model, ref_model=ref, args=args,
                                   train_dataset=Dataset.from_list(preference_rows()), processing_class=packing_tokenizer)
        model.config._attn_implementation = "sdpa"  # run it with a kernel this CPU has
        return trainer

    fallback = build("flash_attention_2")
    assert fallback.data_collator.shared_prefix is False
    packed = build("sdpa")
    assert packed.data_collator.shared_prefix is True
    loss_fallback, _, batch = loss_and_grads(fallback)
    loss_packed, _, _ = loss_and_grads(packed)
    assert "attention_mask" in batch and "segment_ids" not in batch
    torch.testing.assert_close(loss_fallback, loss_packed, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------- per-completion stats


@pytest.mark.parametrize("shared", [True, False], ids=["packed", "naive"])
def test_completion_stats_match_a_slow_reference(shared):
    """Entropy, mean logit and top-1 hits summed per completion, token counts and naive row lengths (what the
    trainer logs as TRL's `entropy`, `logits/*`, `mean_token_accuracy`, `num_tokens`). A vocabulary of 12 tokens,
    the chosen answers being the model's own greedy continuations (all top-1 hits)."""
    from architectures import tiny_model

    from trl_dynamicpo.compat import add_fused_lm_head
    from trl_dynamicpo.packing import forward_completions

    model = tiny_model("llama", 12, seed=9)
    reference = copy.deepcopy(model)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    examples = random_examples(12, ks=(3, 1, 2), seed=10)
    for ex in examples:
        with torch.no_grad():
            greedy = reference.generate(torch.tensor([ex["prompt_ids"]]), max_new_tokens=2, do_sample=False)
        ex["chosen_ids"] = greedy[0, len(ex["prompt_ids"]) :].tolist()
    with torch.no_grad():
        out = forward_completions(model, DataCollatorForMultiNegative(pad_token_id=PAD, shared_prefix=shared)(examples))
    expected = {key: torch.zeros(3, 4) for key in ("entropy", "mean_logits", "top1", "num_tokens", "sequence_tokens")}
    with torch.no_grad():
        for b, ex in enumerate(examples):
            for c, comp in enumerate([ex["chosen_ids"], *ex["rejected_ids"]]):
                prompt = ex["prompt_ids"]
                logits = reference(input_ids=torch.tensor([prompt + comp])).logits[0, len(prompt) - 1 : -1].double()
                logprobs = logits.log_softmax(-1)
                expected["entropy"][b, c] = float(-(logprobs.exp() * logprobs).sum())
                expected["mean_logits"][b, c] = float(logits.mean(-1).sum())
                expected["top1"][b, c] = float((logits.argmax(-1) == torch.tensor(comp)).sum())
                expected["num_tokens"][b, c] = len(comp)
                expected["sequence_tokens"][b, c] = len(prompt) + len(comp)
    assert torch.equal(expected["top1"][:, 0], expected["num_tokens"][:, 0]) and expected["top1"][:, 1:].sum() < expected["num_tokens"][:, 1:].sum()
    for key, value in expected.items():
        torch.testing.assert_close(getattr(out, key).float(), value, atol=1e-5, rtol=0, msg=key)
    assert out.aux_loss is None


def test_compact_lm_head_on_cpu_is_a_deprecated_no_op(tokenizer):
    """The old context manager only warns now: the log-probs inside it are those outside it, which are TRL's own
    fused-head log-probs (summed per completion), and no TRL module attribute changes while it is active."""
    import trl.trainer.utils as trl_utils

    from trl_dynamicpo import compact_lm_head_on_cpu
    from trl_dynamicpo.compat import fused_lm_head_forward

    model = build_tiny_model(tokenizer, seed=11).eval()
    ensure_fused_lm_head(model)
    batch = DataCollatorForMultiNegative(pad_token_id=tokenizer.pad_token_id, shared_prefix=False)(
        random_examples(len(tokenizer), ks=(2, 1), seed=12)
    )
    before = {key: id(value) for key, value in vars(trl_utils).items()}
    with torch.no_grad():
        outside = completion_logps(model, batch)
        with pytest.warns(FutureWarning, match="deprecated"), compact_lm_head_on_cpu():
            inside = completion_logps(model, batch)
            assert {key: id(value) for key, value in vars(trl_utils).items()} == before
        full = fused_lm_head_forward(model, batch["shift_labels"], input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"])["log_probs"]  # fmt: skip
    assert torch.equal(inside, outside)
    slots = batch["completion_slot"]
    for slot in range(outside.numel()):
        torch.testing.assert_close(outside.view(-1)[slot], full[slots == slot].sum(), atol=ATOL, rtol=0)
