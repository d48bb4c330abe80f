"""Small models and offline tokenizers for tests, the quickstart and the benchmarks.

Nothing here downloads anything: the tokenizer is trained on the texts you pass, and the model is built from a
config with random weights. Real checkpoints belong in recipes, not here.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config


SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# A minimal ChatML-like template so that conversational datasets work with the offline tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 2000, items: Iterable[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts`, offline.

    Args:
        texts: training corpus (prompts and answers).
        vocab_size: BPE vocabulary size.
        items: optional item names added as whole tokens, so that every item is one token (fast, and the
            model's answer is a single choice). Names are matched greedily wherever they occur in text.

    Returns:
        A `PreTrainedTokenizerFast` with `<s>`, `</s>`, `<pad>` and `<unk>`, and a small chat template.
    """
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIAL_TOKENS.values()) + ["<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    if items is not None:
        fast.add_tokens(sorted({name for name in items if name}, key=len, reverse=True))
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    *,
    arch: str = "qwen2",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 2048,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    tie_embeddings: bool = False,
):
    """Build a randomly initialised causal LM (Qwen2 or Llama shape) sized to `tokenizer`.

    The defaults give a model of well under a million parameters, for tests. Raise `hidden_size` and
    `num_layers` for the quickstart and benchmarks (hidden 256 x 4 layers is about 5M with a 4k vocabulary).
    With `tie_embeddings` the output layer shares the input embeddings, so naming an item that appears in the prompt
    (a candidate) is easy to learn for a small model.
    """
    import torch

    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tie_embeddings,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
