"""Each assumption `trl_dynamicpo.compat` makes about TRL / transformers / PEFT internals, checked by behaviour on the
installed release, and the rules that keep them in that one module.

A failure here means TRL moved, renamed or changed something the package relies on: port `trl_dynamicpo/compat.py`.
"""

import ast
import types
import warnings
from pathlib import Path

import pytest
import torch
from conftest import preference_rows
from datasets import Dataset

import trl_dynamicpo
from trl_dynamicpo import compat


PACKAGE = Path(trl_dynamicpo.__file__).parent
PAIRS = [{"prompt": "The user listened to Muse. Next:", "chosen": " Air", "rejected": " Moby"}] * 2


def _dpo_config(tmp_path, **options):
    from trl import DPOConfig

    return DPOConfig(str(tmp_path), bf16=False, gradient_checkpointing=False, report_to=[], use_cpu=True, **options)


# ------------------------------------------------------------------------------------------- TRL's fused LM head


def _plain_reference(model, input_ids, shift_labels):
    """log-prob of each label, entropy, mean logit and top-1 hit from the full logits of the unpatched forward."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, fused_lm_head=False).logits.double()
    logprobs = logits.log_softmax(-1)
    mask = shift_labels != -100
    labels = shift_labels.clamp(min=0)
    expected = {
        "log_probs": logprobs.gather(-1, labels[..., None])[..., 0],
        "entropy": -(logprobs.exp() * logprobs).sum(-1),
        "mean_logits": logits.mean(-1),
        "is_top1": (logits.argmax(-1) == labels).double(),
    }
    return {key: value.masked_fill(~mask, 0.0) for key, value in expected.items()}


def test_fused_head_scores_pre_shifted_labels_by_value(make_model):
    """The fields `fused_lm_head_forward` returns are per position, against the label there, 0 where it is -100:
    log-probs, entropy, mean logit and top-1 hits equal those of the full logits. A field the head was added without
    is None."""
    model = make_model(seed=3).eval()
    compat.add_fused_lm_head(model, outputs=compat.FUSED_HEAD_OUTPUTS)
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    shift_labels = torch.tensor([[-100, 7, 8, -100, 30, -100], [12, -100, -100, 15, 16, 40]])
    with torch.no_grad():
        out = compat.fused_lm_head_forward(model, shift_labels, input_ids=input_ids, use_cache=False)
    expected = _plain_reference(model, input_ids, shift_labels)
    assert set(out) == set(compat.FUSED_HEAD_OUTPUTS)
    for key, value in expected.items():
        assert out[key].shape == shift_labels.shape, key
        torch.testing.assert_close(out[key].double(), value, atol=1e-5, rtol=0, msg=key)
    assert expected["is_top1"].sum() < (shift_labels != -100).sum()  # the hits are not trivially all or none

    only_logps = make_model(seed=3).eval()
    compat.add_fused_lm_head(only_logps, outputs=("log_probs",))
    with torch.no_grad():
        out = compat.fused_lm_head_forward(only_logps, shift_labels, input_ids=input_ids)
    assert out["entropy"] is None and out["mean_logits"] is None and out["is_top1"] is None
    torch.testing.assert_close(out["log_probs"].double(), expected["log_probs"], atol=1e-5, rtol=0)


def _head_projection_rows(model, fn) -> list[int]:
    """Rows of every matrix product of hidden states with (a vocabulary slice of) the LM head run inside `fn()`."""
    from torch.profiler import profile

    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    with profile(record_shapes=True) as prof:
        fn()
    return [
        shapes[0][0]
        for event in prof.events()
        if event.name in ("aten::mm", "aten::addmm", "aten::matmul")
        for shapes in [[s for s in event.input_shapes if len(s) == 2]]
        if len(shapes) >= 2 and shapes[1][0] == hidden and hidden * 4 < shapes[1][1] <= vocab
    ]


def test_fused_head_projects_only_the_labelled_positions(make_model):
    """`fused_lm_head_forward` hands TRL's head the labelled positions only: the head's vocabulary products have one
    row per label, not one per position, on CPU too (where TRL 1.16 alone projects every position)."""
    model = make_model(seed=3, hidden_size=16).eval()
    compat.add_fused_lm_head(model, outputs=compat.FUSED_HEAD_OUTPUTS)
    input_ids = torch.arange(5, 5 + 2 * 12).view(2, 12)
    shift_labels = torch.full((2, 12), -100)
    shift_labels[0, 3:5], shift_labels[1, 9] = torch.tensor([8, 9]), 15
    with torch.no_grad():
        ours = _head_projection_rows(model, lambda: compat.fused_lm_head_forward(model, shift_labels, input_ids=input_ids))
        trl = _head_projection_rows(model, lambda: model(input_ids=input_ids, shift_labels=shift_labels, fused_lm_head=True))
    assert ours and set(ours) == {3}
    assert set(trl) <= {3, 24} and trl  # TRL alone: the labelled positions (CUDA) or every position (CPU)


def test_fused_head_is_recognised_and_kept(make_model):
    from trl_dynamicpo.packing import ensure_fused_lm_head

    model = make_model()
    assert not compat.has_fused_lm_head(model)
    compat.add_fused_lm_head(model, outputs=compat.FUSED_HEAD_OUTPUTS)
    assert compat.has_fused_lm_head(model)
    ensure_fused_lm_head(model)  # a head a trainer added keeps its outputs
    out = compat.fused_lm_head_forward(model, torch.tensor([[6, -100]]), input_ids=torch.tensor([[5, 6]]))
    assert out["entropy"] is not None


def test_attention_implementation_reads_the_config(make_model):
    assert compat.attention_implementation(make_model(attn_implementation="eager")) == "eager"
    assert compat.attention_implementation(make_model(attn_implementation="sdpa")) == "sdpa"
    ddp = types.SimpleNamespace(module=make_model(attn_implementation="eager"))
    assert compat.attention_implementation(ddp) == "eager"


def test_tokenize_and_common_prefix(tokenizer):
    ids = compat._tokenize(tokenizer, "The user listened to Muse")["input_ids"]
    assert ids == tokenizer("The user listened to Muse")["input_ids"]
    assert compat.common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert compat.common_prefix_length([1, 2], [1, 2, 4]) == 2


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
    """Router logits are read from `backbone_of(model)`'s output: TRL's fused forward must call that module, and
    its own aux loss (on a 0/1 mask) must be `router_aux_loss` with the same weights."""
    from architectures import tiny_model

    model = tiny_model("qwen3_moe", len(tokenizer))
    compat.add_fused_lm_head(model)
    seen = []
    handle = compat.backbone_of(model).register_forward_hook(lambda module, args, output: seen.append(output))
    ids, mask = torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = model(input_ids=ids, attention_mask=mask, shift_labels=torch.tensor([[6, 7, -100], [9, -100, -100]]),
                fused_lm_head=True, output_router_logits=True)  # fmt: skip
    handle.remove()
    assert len(seen) == 1 and len(seen[0].router_logits) == model.config.num_hidden_layers
    expected = compat.router_aux_loss(seen[0].router_logits, model.config, mask.float())
    torch.testing.assert_close(out.aux_loss, expected)


def test_dpo_trainer_decides_the_aux_loss(tokenizer, tmp_path):
    """`aux_loss_enabled` and `router_aux_loss_coef`, which the loss reads, are set by `DPOTrainer.__init__`."""
    from architectures import tiny_model
    from trl import DPOTrainer

    args = _dpo_config(tmp_path, router_aux_loss_coef=0.25)
    trainer = DPOTrainer(model=tiny_model("qwen3_moe", len(tokenizer)), ref_model=tiny_model("qwen3_moe", len(tokenizer)),
                         args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)  # fmt: skip
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


def test_overridden_hooks_are_called_by_the_parents(tokenizer, make_model, tmp_path):
    """Constructing a DPOTrainer with precomputed reference log-probs and an eval set, and evaluating on a new
    dataset, calls every hook `DynamicPOTrainer` overrides (a renamed hook would silently bypass the override)."""
    from trl import DPOTrainer

    calls = []

    def recording(name):
        def hook(self, *args, **kwargs):
            calls.append(name)
            return getattr(DPOTrainer, name)(self, *args, **kwargs)

        return hook

    Recorder = type("Recorder", (DPOTrainer,), {name: recording(name) for name in compat.DPO_TRAINER_HOOKS})
    trainer = Recorder(model=make_model(), args=_dpo_config(tmp_path, precompute_ref_log_probs=True),
                       train_dataset=Dataset.from_list(PAIRS), eval_dataset=Dataset.from_list(PAIRS),
                       processing_class=tokenizer)  # fmt: skip
    assert calls.count("_prepare_dataset") == 2 and calls.count("_precompute_ref_logps") == 2
    assert "compute_ref_log_probs" in calls  # TRL's precompute loop, batch by batch
    calls.clear()
    trainer.evaluate(eval_dataset=Dataset.from_list(PAIRS[:1]))
    assert calls[:2] == ["_prepare_dataset", "_precompute_ref_logps"]


def test_trainer_class_attributes_name_the_model_card(tokenizer, make_model, tmp_path):
    """`_tag_names`, `_name` and `_paper`, which `DynamicPOTrainer` sets, are what TRL's model card is made of."""
    from trl import DPOTrainer

    values = {"_tag_names": ["trl", "probe-tag"], "_name": "ProbeName", "_paper": {**DPOTrainer._paper, "id": "1234.56789"}}
    assert set(values) == set(compat.DPO_TRAINER_CLASS_ATTRIBUTES)
    Probe = type("Probe", (DPOTrainer,), values)
    trainer = Probe(model=make_model(), ref_model=make_model(), args=_dpo_config(tmp_path),
                    train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)  # fmt: skip
    trainer.create_model_card(model_name="probe")
    card = (tmp_path / "README.md").read_text()
    assert "ProbeName" in card and "1234.56789" in card and "probe-tag" in card


def test_pairwise_collator_carries_trls_pad_token(tokenizer, make_model, tmp_path):
    """Given no collator, DPOTrainer builds its pairwise one with the pad token it settled: the tokenizer's, or the
    (deprecated) `pad_token` option's after TRL's vocabulary check."""
    from trl import DPOTrainer

    def build(**options):
        return DPOTrainer(model=make_model(), ref_model=make_model(), args=_dpo_config(tmp_path, **options),
                          train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)  # fmt: skip

    trainer = build()
    assert isinstance(trainer.data_collator, compat.DPO_PAIRWISE_COLLATORS)
    assert compat.pairwise_pad_token_id(trainer.data_collator) == tokenizer.pad_token_id
    original = tokenizer.pad_token
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `pad_token` is deprecated in TRL
            chosen = build(pad_token=tokenizer.convert_ids_to_tokens(7))
        assert compat.pairwise_pad_token_id(chosen.data_collator) == 7
    finally:
        tokenizer.pad_token = original  # TRL sets it on the (session-wide) tokenizer
    assert compat.pairwise_pad_token_id(object()) is None


def test_prepare_inputs_moves_a_batch_as_prediction_step_does(tokenizer, make_model, tmp_path):
    from trl import DPOTrainer

    trainer = DPOTrainer(model=make_model(), ref_model=make_model(), args=_dpo_config(tmp_path),
                         train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)  # fmt: skip
    batch = {"input_ids": torch.tensor([[1, 2]]), "rejected_mask": torch.tensor([[True]])}
    prepared = compat.prepare_inputs(trainer, batch)
    assert set(prepared) == set(batch)
    for key, value in batch.items():
        assert prepared[key].device == trainer.args.device and torch.equal(prepared[key].cpu(), value), key


def test_reference_free_construction_reassigns_no_trl_global(tokenizer, make_model, make_config):
    """No TRL module global is replaced, while a trainer is constructed (MPPO: no reference model) or while it runs
    a forward (TRL's fused head): every module-level name of TRL keeps its object throughout."""
    import sys

    from trl_dynamicpo import DynamicPOTrainer

    def snapshot():
        return {
            (name, key): id(value)
            for name, module in list(sys.modules.items())
            if name == "trl" or name.startswith("trl.")
            for key, value in list(vars(module).items())
        }

    before, during = snapshot(), []
    model = make_model()
    model.model.register_forward_hook(lambda *_: during.append(snapshot()))  # inside TRL's fused forward
    model.register_forward_pre_hook(lambda *_: during.append(snapshot()))
    trainer = DynamicPOTrainer(
        model=model, args=make_config(multi_negative_loss="mppo", max_steps=1),
        train_dataset=Dataset.from_list(preference_rows(4)), processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    assert during, "the hooks must have run"
    for seen in during + [snapshot()]:
        changed = [key for key in before if key in seen and seen[key] != before[key]]
        assert not changed, changed


# ---------------------------------------------------------------------- where private names may be used


def _private_trl_names(tokenizer, make_model, tmp_path) -> set[str]:
    """Underscore attributes of a constructed DPOTrainer (class and instance), of a transformers config and model,
    and of a PEFT model: the private names of the libraries the package builds on."""
    from peft import LoraConfig, get_peft_model
    from trl import DPOTrainer

    trainer = DPOTrainer(model=make_model(), ref_model=make_model(), args=_dpo_config(tmp_path),
                         train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)  # fmt: skip
    peft_model = get_peft_model(make_model(), LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))
    objects = [trainer, type(trainer), trainer.args, peft_model, type(peft_model), trainer.model.config]
    names = {name for obj in objects for name in [*dir(obj), *vars(obj)] if name.startswith("_")}
    return {name for name in names if not (name.startswith("__") and name.endswith("__"))}


def test_private_names_are_used_through_compat_only(tokenizer, make_model, tmp_path):
    """Outside compat.py, no module imports from a TRL submodule (TRL's public API is its top-level namespace) or
    imports an underscore name, and none reads a private attribute of TRL's trainer, transformers' configs and models
    or PEFT's models, except the DPOTrainer hooks and class attributes compat.py lists (defined by the subclass)."""
    private = _private_trl_names(tokenizer, make_model, tmp_path)
    allowed = set(compat.DPO_TRAINER_HOOKS) | set(compat.DPO_TRAINER_CLASS_ATTRIBUTES)
    assert "_prepare_inputs" in private and "_attn_implementation" in private  # the scan sees what it must
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("trl_dynamicpo"):
                    continue
                if node.module.startswith("trl."):
                    found.append(f"{where} from {node.module} import ...")
                found += [f"{where} imports {a.name}" for a in node.names if a.name.startswith("_") and a.name[1] != "_"]
            elif isinstance(node, ast.Import):
                found += [f"{where} import {a.name}" for a in node.names if a.name.startswith("trl.")]
            elif isinstance(node, ast.Attribute) and node.attr in private and node.attr not in allowed:
                found.append(f"{where} .{node.attr}")
    assert not found, "\n".join(found)


# ------------------------------------------------------------------------------------------- TRL versions


def test_pip_range_starts_at_the_oldest_tested_trl():
    """pyproject's `trl>=X.Y` is the oldest minor the tests run against (`.ci/run` installs it for its second run)."""
    import re

    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    lowest = re.search(r'"trl>=([0-9.]+),', pyproject)
    assert lowest and lowest.group(1) == trl_dynamicpo._TRL_TESTED[0]


def test_trl_version_range():
    """Older than the oldest tested minor: refused at import. Newer than the newest: one warning, not an error."""
    check = trl_dynamicpo._check_trl_version
    oldest, newest = trl_dynamicpo._TRL_TESTED[0], trl_dynamicpo._TRL_TESTED[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for tested in trl_dynamicpo._TRL_TESTED:
            check(f"{tested}.0")
        check(f"{newest}.3")
    major, minor = map(int, newest.split("."))
    with pytest.warns(UserWarning, match="untested"):
        check(f"{major}.{minor + 1}.0")
    with pytest.warns(UserWarning, match="untested"):
        check(f"{major + 1}.0.0.dev0")
    major, minor = map(int, oldest.split("."))
    with pytest.raises(ImportError, match=f"needs trl >= {oldest}"):
        check(f"{major}.{minor - 1}.2")
