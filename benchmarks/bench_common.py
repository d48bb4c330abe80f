"""Shared pieces of the speed benchmarks (`step_time.py`, `gpu_parts.py`), built on the package: LastFM prompts of
realistic length, the package's offline tokenizer and model builder, and the model shapes.

Nothing is downloaded. The prompts come from the LastFM training file of the folder named by `$TRL_DYNAMICPO_DATA`
(`trl_dynamicpo.recsys.find_data_dir`), else from the sample bundled with the package, rendered with a long template
(about 160 prompt tokens, about 4 answer tokens before EOS with a 3k BPE vocabulary trained on the same texts and no
item tokens, as a real LLM's tokenizer splits item names).
"""

from __future__ import annotations

from pathlib import Path


TOKENIZER_VOCAB = 3000
TEMPLATE = "The user has listened to: {history}. Candidates: {candidates}. Which one next?"

# Model shapes (`build_tiny_model` arguments and config fields). "small" is the CPU default (5.5M parameters with the
# 3k vocabulary); "test" is for smoke runs; "qwen2.5-0.5b" is Qwen2.5-0.5B's architecture with random weights
# (494M parameters), for the GPU check.
MODEL_SHAPES = {
    "test": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 128},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 1024},
    "qwen2.5-0.5b": {"hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2,
                     "intermediate_size": 4864, "vocab_size": 151936, "tie_embeddings": True, "rope_theta": 1000000.0,
                     "max_position_embeddings": 32768, "rms_norm_eps": 1e-6},
}  # fmt: skip


def data_path() -> Path:
    """The LastFM training file the prompts come from."""
    from trl_dynamicpo.recsys import find_data_dir, sample_path

    folder = find_data_dir()
    return folder / "train.jsonl.gz" if folder is not None else sample_path("train")


def load_rows(n: int, seed: int = 0) -> list:
    """`n` random prompts (`RecExample`s) of the LastFM training file."""
    import random

    from trl_dynamicpo.recsys import read_examples

    rows = read_examples(data_path())
    return random.Random(seed).sample(rows, min(n, len(rows)))


def builder():
    from trl_dynamicpo.recsys import PromptBuilder

    return PromptBuilder(template=TEMPLATE)


def preference_examples(rows: list, num_negatives: int) -> list[dict]:
    """`prompt`, `chosen` and `rejected` (`num_negatives` of the other candidates) per row: `preference_dataset`."""
    from trl_dynamicpo.recsys import preference_dataset

    return preference_dataset(rows, builder(), num_negatives=num_negatives).to_list()


def build_tokenizer_for(rows: list, vocab_size: int = TOKENIZER_VOCAB):
    """The package's offline BPE tokenizer trained on the rows' prompts and answers (no item tokens)."""
    from trl_dynamicpo.tiny import build_tokenizer

    return build_tokenizer(builder().training_texts(rows), vocab_size=vocab_size)


def build_model(tokenizer, shape: str, *, attn_implementation: str = "sdpa", dtype=None, device="cpu", seed: int = 0):
    """A random-init Qwen2 causal LM of the given shape (`trl_dynamicpo.tiny.build_tiny_model`), created directly on
    `device` in `dtype` (initialising 0.5B parameters on a GPU takes a moment, on a CPU core many seconds)."""
    from trl_dynamicpo.tiny import build_tiny_model

    settings = dict(MODEL_SHAPES[shape])
    settings.setdefault("tie_embeddings", False)
    return build_tiny_model(tokenizer, arch="qwen2", attn_implementation=attn_implementation, dtype=dtype,
                            device=device, seed=seed, **settings)  # fmt: skip


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
