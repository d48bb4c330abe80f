"""The SFT -> `train` handoff builds a reference model only for an objective that reads one (the objective registry
decides): a reference-free run on a merged adapter gets no full frozen copy of the model."""

import pytest
import torch


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory):
    """A LoRA adapter (as `sft` with `use_peft` writes it) on a small base model saved next to it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_dynamicpo.tiny import build_tiny_model, build_tokenizer

    root = tmp_path_factory.mktemp("handoff")
    tokenizer = build_tokenizer([f"The user listened to {a}. Next: {b}" for a in "ABCDEFGH" for b in "ABCD"], vocab_size=80)
    build_tiny_model(tokenizer, hidden_size=32, num_layers=1).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"), LoraConfig(r=2, target_modules="all-linear"))
    torch.nn.init.normal_(peft.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight)  # not a no-op
    peft.save_pretrained(root / "adapter")
    return root / "adapter"


@pytest.mark.parametrize(
    ("objective", "reference_free", "expects_copy"),
    [("dmpo", False, True), ("sdpo", False, True), ("dmpo", True, False), ("sdpo", True, False), ("mppo", False, False)],
)
def test_merged_adapter_gets_a_frozen_copy_only_when_the_objective_reads_it(
    adapter_folder, make_config, objective, reference_free, expects_copy
):
    from trl import ModelConfig

    from trl_dynamicpo.losses import uses_reference_model
    from trl_dynamicpo.pipeline.modeling import policy_inputs

    args = make_config(multi_negative_loss=objective, reference_free=reference_free)
    assert uses_reference_model(args) is expects_copy
    model, ref_model, peft_config, _, how = policy_inputs(ModelConfig(model_name_or_path=str(adapter_folder)), args)
    assert peft_config is None and all(p.requires_grad for p in model.parameters())  # merged: every weight trained
    if expects_copy:
        assert ref_model is not model and not any(p.requires_grad for p in ref_model.parameters())
        for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
            assert torch.equal(p, q), name
        assert how.endswith("reference: a frozen copy")
    else:
        assert ref_model is None
        assert how.endswith(f"no reference model ({objective}{' with reference_free' if reference_free else ''} is "
                            "reference-free)")  # fmt: skip


def test_a_model_path_names_the_reference_it_will_get(make_config):
    from trl import ModelConfig

    from trl_dynamicpo.pipeline.modeling import policy_inputs

    model_args = ModelConfig(model_name_or_path="some/model")
    assert policy_inputs(model_args, make_config())[4] == "policy and reference: some/model"
    assert policy_inputs(model_args, make_config(multi_negative_loss="mppo"))[4] == (
        "policy: some/model; no reference model (mppo is reference-free)"
    )
    lora = ModelConfig(model_name_or_path="some/model", use_peft=True)
    assert policy_inputs(lora, make_config(reference_free=True))[4] == (
        "policy: some/model + new LoRA adapter; no reference model (dmpo with reference_free is reference-free)"
    )
