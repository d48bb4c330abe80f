"""Small models and offline tokenizers for tests, the quickstart and the benchmarks.

Nothing here downloads anything: the tokenizer is trained on the texts you pass, and the model is built from a
config with random weights. Real checkpoints belong in recipes, not here.
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config


logger = logging.getLogger(__name__)

_SPACE = "\u2581"  # "▁"
# How `build_recommender_lm` spells an item: one whole-word token per item, or sub-word pieces of a BPE trained on
# the template words and the catalogue (several tokens per name, shared between names, as in an LLM's vocabulary).
ITEM_TOKENIZATIONS = ("whole", "subword")
ITEM_TOKEN_STATS_FILE = "item_tokens.json"
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
        # Longest first, ties by name: the token ids (hence the model's random init of each item) must not depend on
        # set order, which Python's hash randomisation changes from process to process.
        names = sorted({name for name in items if name}, key=lambda name: (-len(name), name))
        fast.add_tokens([AddedToken(name, single_word=True, normalized=False) for name in names])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


@dataclass(frozen=True)
class ItemTokenStats:
    """How a tokenizer spells the item names, as completions (`" " + name`, no EOS).

    Leading tokens that every name's spelling starts with (a bare space marker `▁` before whole-word item tokens)
    are left out: they are the same token in the same context for every completion of a prompt, so they cancel in
    every comparison of two completions.

    Attributes:
        items: distinct names measured.
        mean_tokens: mean number of tokens per name.
        share_sharing_token: share of names with at least one token that another name's spelling also contains.
        share_sharing_first_token: share of names whose first token is the first token of another name (pushing
            that name's likelihood down at the first position pushes this one's down too).
    """

    items: int
    mean_tokens: float
    share_sharing_token: float
    share_sharing_first_token: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.mean_tokens:.2f} tokens per item name; {100 * self.share_sharing_token:.1f}% of the {self.items} "
            f"names share a token with another name, {100 * self.share_sharing_first_token:.1f}% their first token"
        )


def item_token_stats(tokenizer, items: Iterable[str]) -> ItemTokenStats:
    """Measure how `tokenizer` spells `items` as completions (see `ItemTokenStats`)."""
    names = sorted({name for name in items if name})
    if not names:
        raise ValueError("item_token_stats needs at least one item name.")
    spellings = [tokenizer(" " + name, add_special_tokens=False)["input_ids"] for name in names]
    common = 0  # length of the prefix every spelling shares
    while all(len(ids) > common + 1 and ids[common] == spellings[0][common] for ids in spellings):
        common += 1
    spellings = [ids[common:] for ids in spellings]
    # How many names contain each token / start with it.
    containing = Counter(token for ids in spellings for token in set(ids))
    starting = Counter(ids[0] for ids in spellings if ids)
    return ItemTokenStats(
        items=len(names),
        mean_tokens=sum(map(len, spellings)) / len(names),
        share_sharing_token=sum(any(containing[t] > 1 for t in set(ids)) for ids in spellings) / len(names),
        share_sharing_first_token=sum(bool(ids) and starting[ids[0]] > 1 for ids in spellings) / len(names),
    )


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
    item_tokens: str = "whole",
    vocab_size: int = 1000,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    tie_embeddings: bool = True,
    max_position_embeddings: int = 1024,
    arch: str = "llama",
    seed: int = 0,
    dtype=None,
    device=None,
    output_dir=None,
    **model_kwargs,
):
    """A tokenizer for a catalogue and a small random causal LM for it: the package's one recipe for an offline
    recommender LM (quickstart, sweep presets, examples, benchmarks, tests).

    Two spellings of the items (`item_tokens`):

    * `"whole"`: every item is one whole-word token added to a BPE trained on `texts`, so no two completions share
      a token (fast, and the answer is a single choice);
    * `"subword"`: a BPE of `vocab_size` trained on `texts` and every catalogue name, with no item tokens, so names
      span several tokens and share them (`" Radiohead"` -> `▁Rad io head`), as in an LLM's vocabulary. Pushing a
      negative down then also pushes down the answer's tokens it shares (likelihood displacement).

    The item spelling is measured (`item_token_stats`: mean tokens per name, share of names sharing a token, share
    sharing their first token), logged, and with `output_dir` written to `item_tokens.json`.

    Args:
        texts: the corpus the BPE is trained on (rendered prompts and answers; for `"subword"`, the template words
            are enough, since every catalogue name is added to the corpus once).
        items: the item catalogue: added as whole-word tokens (`"whole"`, `build_tokenizer`) or added to the BPE
            corpus (`"subword"`); None for a plain BPE tokenizer of `texts`.
        item_tokens: `"whole"` (default) or `"subword"`, see above.
        vocab_size: BPE vocabulary size (before the item tokens, with `"whole"`).
        hidden_size, num_layers, num_heads, num_kv_heads: model shape (`num_kv_heads` defaults to half the heads
            when the head dimension allows it).
        tie_embeddings: share input and output embeddings (default here: a small model then learns to name the
            items it reads).
        max_position_embeddings: longest sequence.
        arch: "llama" (default) or "qwen2". With "llama", `AutoTokenizer` reloads a saved tokenizer exactly as it
            was built; transformers 5 rebuilds the tokenizer of a saved "qwen2" model as a byte-level Qwen2
            tokenizer, which tokenizes differently (so load that one with `PreTrainedTokenizerFast`).
        seed: weight initialisation seed.
        dtype, device: where the weights are created.
        output_dir: when given, the model and the tokenizer are also saved there (loadable by every command).
        model_kwargs: further `build_tiny_model` arguments (`intermediate_size`, `attn_implementation`, config
            fields).

    Returns:
        (model, tokenizer).
    """
    if item_tokens not in ITEM_TOKENIZATIONS:
        raise ValueError(f"item_tokens={item_tokens!r}; choose one of {ITEM_TOKENIZATIONS}.")
    items = None if items is None else list(items)
    if item_tokens == "subword":
        if not items:
            raise ValueError('item_tokens="subword" needs the item catalogue (`items`): the BPE is trained on it.')
        tokenizer = build_tokenizer([*texts, *items], vocab_size=vocab_size)
    else:
        tokenizer = build_tokenizer(list(texts), vocab_size=vocab_size, items=items)
    stats = item_token_stats(tokenizer, items) if items else None
    if stats is not None:
        logger.info("Item spelling (%s): %s", item_tokens, stats.describe())
    if num_kv_heads is None:
        num_kv_heads = num_heads // 2 if num_heads % 2 == 0 and hidden_size % 8 == 0 else num_heads
    model = build_tiny_model(
        tokenizer,
        arch=arch,
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
    if output_dir is not None:
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        if stats is not None:
            record = {"item_tokens": item_tokens, **stats.as_dict()}
            Path(output_dir, ITEM_TOKEN_STATS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return model, tokenizer
