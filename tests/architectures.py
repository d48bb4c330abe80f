"""Tiny configs of the text architectures TRL's tiny-model generators cover, and the hybrids / ALiBi models the packed
layout must not be used for (tests only).

Every model has 2 layers, hidden size 16 and random weights; sliding-window models get a window of 4 positions, so
prompt + completion rows (3-12 tokens in the tests) exceed it and the windowed block mask is exercised. Each entry:
`model_type -> (config class name in transformers, config overrides)`.
"""

import torch
import transformers


BASE = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
WINDOW = 4
SLIDING_THEN_FULL = ["sliding_attention", "full_attention"]
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)

# Every layer is causal self-attention, positions from position ids: packed rows must give the naive log-probs.
PACKED = {
    "llama": ("Llama", {}),
    "qwen2": ("Qwen2", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    "qwen3": ("Qwen3", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    "qwen2_moe": ("Qwen2Moe", dict(MOE, num_experts=4, shared_expert_intermediate_size=16)),
    "qwen3_moe": ("Qwen3Moe", dict(MOE, num_experts=4)),
    "mistral": ("Mistral", dict(sliding_window=WINDOW)),
    "ministral": ("Ministral", dict(head_dim=4, sliding_window=WINDOW, layer_types=["sliding_attention"] * 2)),
    "mixtral": ("Mixtral", dict(sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2)),
    "gemma": ("Gemma", dict(head_dim=4)),
    "gemma2": ("Gemma2", dict(head_dim=4, sliding_window=WINDOW)),
    "gemma3_text": ("Gemma3Text", dict(head_dim=4, sliding_window=WINDOW, layer_types=SLIDING_THEN_FULL)),
    "phi": ("Phi", {}),
    "phi3": ("Phi3", dict(sliding_window=WINDOW)),
    "cohere": ("Cohere", {}),
    "cohere2": ("Cohere2", dict(sliding_window=WINDOW, layer_types=SLIDING_THEN_FULL)),
    "glm4": ("Glm4", {}),
    "glm4_moe": ("Glm4Moe", dict(MOE, n_routed_experts=4, first_k_dense_replace=1)),
    "deepseek_v3": (
        "DeepseekV3",
        dict(MOE, n_routed_experts=4, first_k_dense_replace=1, num_key_value_heads=4, kv_lora_rank=8, q_lora_rank=8,
             qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=4, n_group=1, topk_group=1),
    ),  # fmt: skip
    "gpt_oss": (
        "GptOss",
        dict(num_local_experts=4, num_experts_per_tok=2, head_dim=4, sliding_window=WINDOW, layer_types=SLIDING_THEN_FULL),
    ),
    "olmo": ("Olmo", {}),
    "olmo2": ("Olmo2", {}),
    "olmo3": ("Olmo3", dict(sliding_window=WINDOW, layer_types=SLIDING_THEN_FULL)),
    "granite": ("Granite", {}),
    "granitemoe": ("GraniteMoe", dict(num_local_experts=4, num_experts_per_tok=2)),
    "starcoder2": ("Starcoder2", dict(sliding_window=WINDOW)),
    "smollm3": ("SmolLM3", {}),
    "falcon": ("Falcon", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "gpt2": ("GPT2", dict(n_embd=16, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": ("GPTNeoX", {}),
    "opt": ("OPT", dict(ffn_dim=32, word_embed_proj_dim=16)),
}
# Convolution / state-space / linear-attention hybrids and ALiBi: naive rows, and the reason (a substring of it).
NAIVE = {
    "lfm2": ("Lfm2", dict(full_attn_idxs=[1]), "'conv' layers"),
    "falcon_h1": (
        "FalconH1",
        dict(mamba_d_ssm=16, mamba_n_heads=4, mamba_d_head=4, mamba_d_state=4, mamba_n_groups=1, mamba_chunk_size=4,
             head_dim=4),
        "'hybrid' layers",
    ),  # fmt: skip
    "nemotron_h": (
        "NemotronH",
        dict(hybrid_override_pattern="M*", mamba_num_heads=4, mamba_head_dim=4, ssm_state_size=4, n_groups=1,
             chunk_size=4, head_dim=4),
        "'linear_attention' layers",
    ),  # fmt: skip
    "granitemoehybrid": (
        "GraniteMoeHybrid",
        dict(layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=8, mamba_expand=2, mamba_d_state=4,
             mamba_n_groups=1, mamba_chunk_size=4, num_local_experts=4, num_experts_per_tok=2),
        "'linear_attention' layers",
    ),  # fmt: skip
    "jamba": (
        "Jamba",
        dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=4,
             num_experts_per_tok=2, mamba_d_state=4, mamba_dt_rank=4, use_mamba_kernels=False),
        "'linear_attention' layers",
    ),  # fmt: skip
    "qwen3_next": (
        "Qwen3Next",
        dict(MOE, num_experts=4, shared_expert_intermediate_size=16, layer_types=["linear_attention", "full_attention"],
             linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=4, linear_value_head_dim=4,
             head_dim=4),
        "'linear_attention' layers",
    ),  # fmt: skip
    "falcon_mamba": ("FalconMamba", dict(state_size=4, expand=2, conv_kernel=4), "'linear_attention' layers"),
    "bloom": ("Bloom", dict(n_layer=2, n_head=4), "ALiBi"),
    "falcon_alibi": ("Falcon", dict(alibi=True, new_decoder_architecture=True, num_kv_heads=2), "ALiBi"),
}


def tiny_config(name: str, vocab_size: int, **overrides):
    """The tiny config of `name` (a key of `PACKED` or `NAIVE`) for a vocabulary of `vocab_size` tokens."""
    class_name, extra = PACKED[name] if name in PACKED else NAIVE[name][:2]
    kwargs = {**BASE, **extra, **overrides, "vocab_size": vocab_size, "pad_token_id": 0, "bos_token_id": 1,
              "eos_token_id": 2}  # fmt: skip
    return getattr(transformers, f"{class_name}Config")(**kwargs)


def tiny_model(name: str, vocab_size: int, *, seed: int = 0, attn_implementation: str | None = None, **overrides):
    """A float32 tiny model of `name` (sdpa where the architecture has it, eager otherwise), in eval mode."""
    config = tiny_config(name, vocab_size, **overrides)
    for impl in [attn_implementation] if attn_implementation else ["sdpa", "eager"]:
        torch.manual_seed(seed)
        try:
            return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl).eval()
        except ValueError:  # this architecture has no sdpa kernel
            if attn_implementation:
                raise
    raise AssertionError(f"{name}: no attention implementation builds")
