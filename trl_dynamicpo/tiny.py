"""Small models and offline tokenizers for tests, the quickstart and the benchmarks.

Nothing here downloads anything: the tokenizer is trained on the texts you pass, and the model is built from a
config with random weights. Real checkpoints belong in recipes, not here.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config


_SPACE = "\u2581"  # "▁"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}

# A minimal ChatML-like template so that conversational datasets work with the offline tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer(
    texts: Iterable[str], *, vocab_size: int = 2000, items: Iterable[str] | None = None
) -> PreTrainedTokenizerFast:
    """Train a small BPE tokenizer on `texts`, offline.

    Punctuation, newlines and tabs are split off and spaces become the marker "▁" glued to the next word (SentencePiece style), so decoding returns exactly the
    text, item names with any characters included (a byte-level BPE would decode an added "Björk" as "Bj\ufffdrk");
    printable ASCII is always in the vocabulary, other characters unseen in `texts` become `<unk>`.

    Args:
        texts: training corpus (prompts and answers).
        vocab_size: BPE vocabulary size.
        items: optional item names added as whole tokens, so that every item is one token (fast, and the
            model's answer is a single choice). A name matches only as a whole word (not glued to a letter, digit
            or underscore), so the artist "Can" stays out of the word "Candidates"; longer names win over their
            prefixes ("Muse Tribute" over "Muse").

    Returns:
        A `PreTrainedTokenizerFast` with `<s>`, `</s>`, `<pad>` and `<unk>`, and a small chat template.
    """
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S ]"), "isolated"),  # newlines and tabs stand alone
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="never"),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="never")
    specials = list(SPECIAL_TOKENS.values()) + ["<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=[c for c in string.printable if c != " "] + [_SPACE],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    if items is not None:
        names = sorted({name for name in items if name}, key=len, reverse=True)
        fast.add_tokens([AddedToken(name, single_word=True, normalized=False) for name in names])
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
    dtype=None,
    device=None,
    **config_kwargs,
):
    """Build a randomly initialised causal LM (Qwen2 or Llama shape) sized to `tokenizer`.

    The defaults give a model of well under a million parameters, for tests. Raise `hidden_size` and
    `num_layers` for the quickstart and benchmarks (hidden 256 x 4 layers is about 5M with a 4k vocabulary).
    With `tie_embeddings` the output layer shares the input embeddings, so naming an item that appears in the prompt
    (a candidate) is easy to learn for a small model. `dtype` and `device` create the weights directly in that
    dtype and on that device (a 0.5B shape initialises in seconds on a GPU); `config_kwargs` go to the config
    (for instance `vocab_size` or `rope_theta` to mimic a real model's shape).
    """
    import torch

    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": tie_embeddings,
        **config_kwargs,
    }
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(
            config_cls(**settings), attn_implementation=attn_implementation, dtype=dtype
        )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_recommender_lm(
    texts: Iterable[str],
    items: Iterable[str] | None = None,
    *,
    vocab_size: int = 1000,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    tie_embeddings: bool = True,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    dtype=None,
    device=None,
    **model_kwargs,
):
    """A tokenizer in which every item is one token and a small random causal LM for it: the package's one recipe
    for an offline recommender LM (quickstart, sweep presets, examples, benchmarks, tests).

    Args:
        texts: the corpus the BPE part of the tokenizer is trained on (rendered prompts and answers).
        items: item names added as whole-word tokens (`build_tokenizer`); None for a plain BPE tokenizer.
        vocab_size: BPE vocabulary size, before the item tokens.
        hidden_size, num_layers, num_heads, num_kv_heads: model shape (`num_kv_heads` defaults to half the heads
            when the head dimension allows it).
        tie_embeddings: share input and output embeddings (default here: a small model then learns to name the
            items it reads).
        max_position_embeddings: longest sequence.
        seed: weight initialisation seed.
        dtype, device: where the weights are created.
        model_kwargs: further `build_tiny_model` arguments (`arch`, `intermediate_size`, `attn_implementation`,
            config fields).

    Returns:
        (model, tokenizer).
    """
    tokenizer = build_tokenizer(list(texts), vocab_size=vocab_size, items=items)
    if num_kv_heads is None:
        num_kv_heads = num_heads // 2 if num_heads % 2 == 0 and hidden_size % 8 == 0 else num_heads
    model = build_tiny_model(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        seed=seed,
        tie_embeddings=tie_embeddings,
        dtype=dtype,
        device=device,
        **model_kwargs,
    )
    return model, tokenizer
