"""Each assumption `trl_dynamicpo.compat` makes about TRL / transformers internals, checked on the installed release.

A failure here means TRL moved or renamed something the package relies on: port `trl_dynamicpo/compat.py`.
"""

import inspect
import types

import torch

from trl_dynamicpo import compat


def test_every_compat_name_resolves():
    for name in compat.__all__:
        assert getattr(compat, name) is not None, name


def test_use_triton_is_the_switch_of_the_fused_head():
    utils = compat.trl_utils_module()
    switch = getattr(utils, compat.USE_TRITON_ATTRIBUTE)
    assert callable(switch)
    assert switch(torch.device("cpu")) is False  # TRL scores every position on CPU: what the compact head changes
    # The fused forward looks the switch up in the module at call time, so patching the module attribute works.
    assert compat.USE_TRITON_ATTRIBUTE in inspect.getsource(utils)


def test_fused_head_is_recognised(make_model):
    model = make_model()
    assert not compat.has_fused_lm_head(model)
    compat.add_fused_lm_head(model, outputs=("log_probs",))
    assert compat.has_fused_lm_head(model)


def test_attention_implementation_reads_the_config(make_model):
    assert compat.attention_implementation(make_model(attn_implementation="eager")) == "eager"
    assert compat.attention_implementation(make_model(attn_implementation="sdpa")) == "sdpa"


def test_tokenize_and_common_prefix(tokenizer):
    ids = compat._tokenize(tokenizer, "The user listened to Muse")["input_ids"]
    assert ids == tokenizer("The user listened to Muse")["input_ids"]
    assert compat.common_prefix_length([1, 2, 3], [1, 2, 4]) == 2


def test_load_balancing_loss_weights_tokens_by_the_mask():
    """`router_aux_loss` passes per-token weights as the attention mask: a token of weight 2 counts as two copies."""
    torch.manual_seed(0)
    rows, length, experts, layers = 2, 5, 4, 3
    logits = [torch.randn(rows * length, experts) for _ in range(layers)]
    weights = torch.tensor([[2.0, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    # The same tokens with the weight-2 one repeated as its own row, padding dropped: a 0/1 mask.
    copies = [torch.cat([layer.view(rows, length, experts), layer.view(rows, length, experts)[:1]]) for layer in logits]
    mask = torch.cat([(weights > 0).float(), torch.tensor([[1.0, 0, 0, 0, 0]])])
    expected = compat.load_balancing_loss_func(tuple(c.reshape(-1, experts) for c in copies), experts, 2, mask)
    config = types.SimpleNamespace(get_text_config=lambda: types.SimpleNamespace(num_experts=experts, num_experts_per_tok=2))
    torch.testing.assert_close(compat.router_aux_loss(tuple(logits), config, weights), expected)


def test_backbone_is_what_the_fused_head_runs(tokenizer):
    """Router logits are read from `backbone_of(model)`'s output: TRL's fused forward must call that module."""
    from architectures import tiny_model

    model = tiny_model("qwen3_moe", len(tokenizer))
    compat.add_fused_lm_head(model)
    seen = []
    handle = compat.backbone_of(model).register_forward_hook(lambda module, args, output: seen.append(output))
    ids = torch.tensor([[5, 6, 7]])
    model(input_ids=ids, shift_labels=torch.tensor([[6, 7, -100]]), fused_lm_head=True, output_router_logits=True)
    handle.remove()
    assert len(seen) == 1 and len(seen[0].router_logits) == model.config.num_hidden_layers
    # The config fields TRL's fused head reads for the aux loss (transformers >= 5.6).
    assert model.config.get_text_config().num_experts == 4 and model.config.num_experts_per_tok == 2


def test_dpo_trainer_decides_the_aux_loss(tokenizer, tmp_path):
    """`aux_loss_enabled` and `router_aux_loss_coef`, which the loss reads, are set by `DPOTrainer.__init__`."""
    from architectures import tiny_model
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    row = {"prompt": "The user listened to Muse. Next:", "chosen": " Air", "rejected": " Moby"}
    args = DPOConfig(str(tmp_path), report_to=[], use_cpu=True, bf16=False, router_aux_loss_coef=0.25)
    trainer = DPOTrainer(model=tiny_model("qwen3_moe", len(tokenizer)), ref_model=tiny_model("qwen3_moe", len(tokenizer)),
                         args=args, train_dataset=Dataset.from_list([row]), processing_class=tokenizer)  # fmt: skip
    assert trainer.aux_loss_enabled is True and trainer.router_aux_loss_coef == 0.25


def test_prompt_learning_state_and_forward(make_model):
    """`active_prompt_learning` reads PEFT's active config and `_adapters_disabled`; PEFT's prompt-learning forward
    calls its base model as a module (so a forward pre-hook sees the virtual tokens) and, given no attention mask,
    passes none."""
    from peft import PromptTuningConfig, get_peft_model

    model = make_model()
    compat.add_fused_lm_head(model)
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert compat.active_prompt_learning(peft_model) == ("PROMPT_TUNING", 3)
    assert compat.active_prompt_learning(types.SimpleNamespace(module=peft_model)) == ("PROMPT_TUNING", 3)  # DDP
    with peft_model.disable_adapter():
        assert compat.active_prompt_learning(peft_model) is None
    assert compat.active_prompt_learning(make_model()) is None
    seen = {}
    handle = peft_model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    peft_model(input_ids=torch.tensor([[5, 6]]), shift_labels=torch.tensor([[-100] * 3 + [6, -100]]), fused_lm_head=True)
    handle.remove()
    assert seen["inputs_embeds"].shape[1] == 5 and seen["attention_mask"] is None

# ------------------------------------------------------------------------------ DPOTrainer hooks and state


def _dpo_sources():
    from transformers import Trainer
    from trl import DPOTrainer

    return inspect.getsource(DPOTrainer) + inspect.getsource(Trainer)


def test_overridden_hooks_are_still_called_by_the_parents():
    from trl import DPOTrainer

    sources = _dpo_sources()
    for name in compat.DPO_TRAINER_HOOKS:
        assert callable(getattr(DPOTrainer, name, None)), name
        assert f"self.{name}(" in sources, f"DPOTrainer / Trainer no longer call {name}"


def test_private_trainer_attributes_are_still_used():
    sources = _dpo_sources()
    for name in compat.TRAINER_ATTRIBUTES:
        assert f"self.{name}" in sources, name
    # `Trainer` keeps only the signature columns when it removes unused ones, after asking the hook for them.
    from transformers import Trainer

    remove = inspect.getsource(Trainer._remove_unused_columns)
    assert "_set_signature_columns_if_needed()" in remove and "self._signature_columns" in remove


def _dpo_config(tmp_path, **options):
    from trl import DPOConfig

    return DPOConfig(str(tmp_path), bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True, **options)


def _dpo_trainer(tokenizer, model, tmp_path, train_dataset=None, args=None, **options):
    from datasets import Dataset
    from trl import DPOTrainer

    rows = [{"prompt": "The user listened to Muse. Next:", "chosen": " Air", "rejected": " Moby"}] * 2
    args = args or _dpo_config(tmp_path, **options)
    dataset = train_dataset or Dataset.from_list(rows)
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer), args


def test_pairwise_collators_are_the_ones_trl_builds(tokenizer, make_model, tmp_path):
    trainer, _ = _dpo_trainer(tokenizer, make_model(), tmp_path, precompute_ref_log_probs=True)
    assert isinstance(trainer.data_collator, compat.DPO_PAIRWISE_COLLATORS)


def test_precompute_cache_is_where_trl_writes_it(tokenizer, make_model, tmp_path):
    import os

    from datasets import Dataset, load_from_disk

    rows = [{"prompt": "The user listened to Muse. Next:", "chosen": " Air", "rejected": " Moby"}] * 2
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "data"))
    trainer, args = _dpo_trainer(tokenizer, make_model(), tmp_path / "out", precompute_ref_log_probs=True,
                                 train_dataset=load_from_disk(str(tmp_path / "data")))  # fmt: skip
    prepared = trainer._prepare_dataset(load_from_disk(str(tmp_path / "data")), tokenizer, args, "train")
    fingerprint, path = compat.precompute_cache(prepared, trainer._precompute_model_hash)
    assert os.path.exists(path) and fingerprint in path
    assert Dataset.from_file(path).column_names == ["ref_chosen_logps", "ref_rejected_logps"]


def test_no_reference_model_loads_and_hashes_nothing(tokenizer, make_model, tmp_path):
    args = _dpo_config(tmp_path)
    with compat.no_reference_model(args):
        trainer, _ = _dpo_trainer(tokenizer, make_model(), tmp_path, args=args)
    # Without the context, TRL would reload the policy from its (here empty) name as the reference.
    assert trainer.ref_model is None and trainer._precompute_model_hash is None
    assert args.precompute_ref_log_probs is False


def test_main_process_first_runs_in_a_single_process():
    with compat.global_then_local_main_first():
        ran = True
    assert ran
