"""Each assumption `trl_dynamicpo.compat` makes about TRL / transformers internals, checked on the installed release.

A failure here means TRL moved or renamed something the package relies on: port `trl_dynamicpo/compat.py`.
"""

import inspect

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
