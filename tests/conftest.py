import os
from pathlib import Path

import pytest


os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "TRL_DYNAMICPO_DATA"  # the folder of the full LastFM split (docs/recsys.md: "The benchmarks' data folder")
FULL_LASTFM_FILES = ("train.jsonl.gz", "val.jsonl.gz", "items.txt")


ARTISTS = [
    " Radiohead", " Muse", " Placebo", " Shakira", " Slayer", " Dolly Parton", " Arcade Fire", " Björk",
    " Daft Punk", " Metallica", " Portishead", " Massive Attack", " Coldplay", " Nirvana", " Madonna",
    " The Cure", " Pixies", " Air", " Moby", " Enigma",
]


@pytest.fixture(scope="session")
def tokenizer():
    from trl_dynamicpo.tiny import build_tokenizer

    corpus = [f"The user listened to{a},{b} and{c}. Next:{d}</s>" for a in ARTISTS for b in ARTISTS[:5] for c in ARTISTS[:3] for d in ARTISTS[:2]]
    return build_tokenizer(corpus, vocab_size=400)


@pytest.fixture()
def make_model(tokenizer):
    from trl_dynamicpo.tiny import build_tiny_model

    def make(seed=0, **kwargs):
        return build_tiny_model(tokenizer, seed=seed, **kwargs)

    return make


@pytest.fixture()
def make_config(tmp_path):
    from trl_dynamicpo import DynamicPOConfig

    def make(**overrides):
        base = dict(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            bf16=False,
            gradient_checkpointing=False,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            learning_rate=5e-3,
            max_steps=3,
            seed=0,
        )
        base.update(overrides)
        return DynamicPOConfig(**base)

    return make


def preference_rows(n=12, k_max=3, conversational=False):
    """Rows with K varying between 1 and k_max."""
    rows = []
    for i in range(n):
        history = ",".join(ARTISTS[(i + j) % len(ARTISTS)] for j in range(3))
        k = 1 + i % k_max
        negatives = [ARTISTS[(i + 5 + j) % len(ARTISTS)] for j in range(k)]
        chosen = ARTISTS[(i + 3) % len(ARTISTS)]
        prompt = f"The user listened to{history}. Next:"
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen.strip()}],
                    "rejected": [[{"role": "assistant", "content": r.strip()}] for r in negatives],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": negatives})
    return rows


@pytest.fixture(scope="session")
def slice_data(tmp_path_factory):
    """The bundled sample cut to its 200 most frequent artists (a small vocabulary: fast on CPU) and a tiny model +
    tokenizer for it saved so that the CLI can load it by path; built once per session (CLI, distributed, resume
    and QLoRA tests)."""
    from trl_dynamicpo.recsys import PromptBuilder, read_catalogue, read_examples, write_sample_slice
    from trl_dynamicpo.tiny import build_recommender_lm

    root = tmp_path_factory.getbasetemp() / "cli-slice-200"
    files = write_sample_slice(root / "data", 200)
    texts = PromptBuilder().training_texts(read_examples(files["train_file"])[:64])
    build_recommender_lm(texts, read_catalogue(files["items_file"]), vocab_size=300, hidden_size=32, num_layers=1,
                         output_dir=root / "base")  # fmt: skip
    return {"model_name_or_path": str(root / "base"), **files}


def four_bit_unavailable() -> str | None:
    """Why 4-bit bitsandbytes cannot run here, or None when a quantize/dequantize round trip works on the CPU."""
    try:
        import bitsandbytes.functional as bnbf
        import torch
    except ImportError as err:
        return f"bitsandbytes is not installed ({err})"
    try:
        weight = torch.randn(64, 64)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        restored = bnbf.dequantize_4bit(packed, state)
    except (RuntimeError, NotImplementedError, AttributeError, ValueError) as err:
        return f"bitsandbytes {getattr(bnbf, '__version__', '')} has no CPU 4-bit kernel here: {err}"
    if (restored - weight).abs().mean() > 0.2:
        return "bitsandbytes' CPU NF4 round trip is inaccurate"
    return None


@pytest.fixture(scope="session")
def four_bit():
    """Skips the test, with the reason, where 4-bit bitsandbytes cannot run (the QLoRA tests and the paper recipes)."""
    reason = four_bit_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def full_lastfm() -> Path:
    """The folder of the full LastFM split (`train.jsonl.gz`, `val.jsonl.gz`, `items.txt`).

    Taken from the environment variable `TRL_DYNAMICPO_DATA`, else `../shared/data/lastfm` beside the repository;
    the test is skipped, with the reason, when neither holds the files (a `TRL_DYNAMICPO_DATA` that does not is an
    error: it was set on purpose).
    """
    given = os.environ.get(DATA_ENV)
    folder = Path(given) if given else REPO.parent / "shared" / "data" / "lastfm"
    missing = [name for name in FULL_LASTFM_FILES if not (folder / name).is_file()]
    if missing and given:
        pytest.fail(f"{DATA_ENV}={given} lacks {', '.join(missing)} (see docs/recsys.md, 'The benchmarks' data folder').")
    if missing:
        pytest.skip(
            f"the full LastFM split is not here: set {DATA_ENV} to the folder holding {', '.join(FULL_LASTFM_FILES)} "
            "(docs/recsys.md: 'The benchmarks' data folder'), or put it in ../shared/data/lastfm beside the repository"
        )
    return folder
