"""Shared pieces of the benchmark scripts: LastFM-length prompts, an offline BPE tokenizer and model shapes.

Nothing is downloaded. The prompts are built from the LastFM training file in `/work/shared/data/lastfm/` when it
exists, otherwise from the sample bundled with the package (`trl_dynamicpo/data/lastfm_sample/`), so that their
token lengths are realistic (about 160 prompt tokens, about 4 answer tokens before EOS, with a 3k BPE vocabulary
trained on the same texts).
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = (
    Path("/work/shared/data/lastfm/train.jsonl.gz"),
    REPO / "trl_dynamicpo" / "data" / "lastfm_sample" / "train.jsonl.gz",
)
TOKENIZER_VOCAB = 3000

# Model shapes. "small" is the CPU default (5.5M parameters with the 3k vocabulary); "test" is for smoke runs;
# "qwen2.5-0.5b" is Qwen2.5-0.5B's architecture with random weights (494M parameters), for the GPU check.
MODEL_SHAPES = {
    "test": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 128},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 1024},
    "qwen2.5-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6},
}


def data_path() -> Path:
    for path in DATA_CANDIDATES:
        if path.exists():
            return path
    raise FileNotFoundError(f"No LastFM training file found; looked for {[str(p) for p in DATA_CANDIDATES]}.")


def load_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` random rows of the LastFM training file (`historyList`, `itemList`, `trueSelection`)."""
    with gzip.open(data_path(), "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return random.Random(seed).sample(rows, min(n, len(rows)))


def history_names(row: dict) -> list[str]:
    history = row["historyList"]
    return list(history) if isinstance(history, list) else history.split("::")


def render_prompt(row: dict) -> str:
    return (
        f"The user has listened to: {', '.join(history_names(row))}. "
        f"Candidates: {', '.join(row['itemList'])}. Which one next? Answer:"
    )


def preference_examples(rows: list[dict], num_negatives: int) -> list[dict]:
    """`prompt`, `chosen` and `rejected` (a list of `num_negatives` other candidates) per row."""
    examples = []
    for row in rows:
        negatives = [c for c in row["itemList"] if c != row["trueSelection"]][:num_negatives]
        examples.append(
            {"prompt": render_prompt(row), "chosen": " " + row["trueSelection"], "rejected": [" " + c for c in negatives]}
        )
    return examples


def build_tokenizer_for(rows: list[dict], vocab_size: int = TOKENIZER_VOCAB):
    """Byte-level BPE trained on the rows' prompts and candidate names (offline)."""
    from trl_dynamicpo.tiny import build_tokenizer

    texts = [render_prompt(r) for r in rows] + [" " + c for r in rows for c in r["itemList"]]
    return build_tokenizer(texts, vocab_size=vocab_size)


def build_model(tokenizer, shape: str, *, attn_implementation: str = "sdpa", dtype=None, device="cpu", seed: int = 0):
    """Random-init Qwen2 causal LM of the given shape (vocabulary: the tokenizer's unless the shape fixes it).

    The weights are created directly on `device` (initialising 0.5B parameters on a GPU takes a moment, on a CPU
    core many seconds).
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    kwargs = dict(MODEL_SHAPES[shape])
    kwargs.setdefault("vocab_size", len(tokenizer))
    kwargs.setdefault("tie_word_embeddings", False)
    config = Qwen2Config(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
