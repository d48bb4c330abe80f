"""Recommendation data and evaluation for LLM-based sequential recommendation (LLaRA / S-DPO / DynamicPO style).

Modules:

- `readers`: `RecExample`, `read_catalogue`, `read_examples`, `write_examples` (S-DPO file format).
- `candidates`: `leak_free_candidates`, `make_leak_free_file`, `leak_check` (the public lists leak the target).
- `prompts`: `PromptBuilder` and the domain templates (text boundary convention documented there).
- `training_data`: `sft_dataset`, `preference_dataset` (TRL prompt-completion / multi-negative preference formats).
- `metrics`: `parse_answer`, `generation_metrics`, `ranking_metrics`.
- `baselines`: random, popularity and transition baselines, `baseline_metrics`.
- `evaluation`: `evaluate_ranking`, `evaluate_generation`, `RecEvalCallback`, `read_hits` (per-prompt hits).
- `sample`: the bundled LastFM sample (`load_sample`, `sample_path`, `build_sample`).
- `safe_pickle`: `load_dataframe_pickle`, `pickle_globals`, `UnsafePickleError` (a pickle is not trusted).
- `raw`: LLaRA's raw split tables and catalogues, `read_raw_table`, `read_raw_catalogue`, `NAME_RULES`.
- `build`: `build_dataset` (the recipes' data files and their manifest; `trl-dynamicpo data build`).
- `download`: `download_raw` (LLaRA's Hub dataset and S-DPO's published JSON; needs network).

Names are imported lazily, so `import trl_dynamicpo.recsys` does not load torch or transformers.
"""

from importlib import import_module
from typing import TYPE_CHECKING


_LAZY = {
    "RecExample": "readers",
    "RecDataError": "readers",
    "read_catalogue": "readers",
    "read_examples": "readers",
    "write_examples": "readers",
    "split_history": "readers",
    "leak_free_candidates": "candidates",
    "make_leak_free_file": "candidates",
    "leak_check": "candidates",
    "catalogue_from_examples": "candidates",
    "sdpo_candidates": "candidates",
    "PromptBuilder": "prompts",
    "TEMPLATES": "prompts",
    "ANSWER_CUE": "prompts",
    "COMPACT_TEMPLATE": "prompts",
    "sft_dataset": "training_data",
    "preference_dataset": "training_data",
    "sample_negatives": "training_data",
    "score_candidates": "evaluation",
    "generated_negatives": "evaluation",
    "read_hits": "evaluation",
    "parse_answer": "metrics",
    "generation_metrics": "metrics",
    "ranking_metrics": "metrics",
    "target_ranks": "metrics",
    "random_baseline": "baselines",
    "popularity_baseline": "baselines",
    "transition_baseline": "baselines",
    "baseline_metrics": "baselines",
    "item_counts": "baselines",
    "evaluate_ranking": "evaluation",
    "evaluate_generation": "evaluation",
    "generate_answers": "evaluation",
    "RecEvalCallback": "evaluation",
    "sample_path": "sample",
    "load_sample": "sample",
    "build_sample": "sample",
    "sample_catalogue": "sample",
    "find_data_dir": "sample",
    "DATA_ENV": "sample",
    "write_sample_slice": "sample",
    "load_dataframe_pickle": "safe_pickle",
    "pickle_globals": "safe_pickle",
    "UnsafePickleError": "safe_pickle",
    "read_raw_table": "raw",
    "read_raw_catalogue": "raw",
    "NAME_RULES": "raw",
    "build_dataset": "build",
    "find_split_sources": "build",
    "RawFileMismatch": "build",
    "PUBLISHED_SHA256": "build",
    "download_raw": "download",
}

__all__ = [
    "RecExample",
    "RecDataError",
    "read_catalogue",
    "read_examples",
    "write_examples",
    "split_history",
    "leak_free_candidates",
    "make_leak_free_file",
    "leak_check",
    "catalogue_from_examples",
    "sdpo_candidates",
    "PromptBuilder",
    "TEMPLATES",
    "ANSWER_CUE",
    "COMPACT_TEMPLATE",
    "sft_dataset",
    "preference_dataset",
    "sample_negatives",
    "score_candidates",
    "generated_negatives",
    "read_hits",
    "parse_answer",
    "generation_metrics",
    "ranking_metrics",
    "target_ranks",
    "random_baseline",
    "popularity_baseline",
    "transition_baseline",
    "baseline_metrics",
    "item_counts",
    "evaluate_ranking",
    "evaluate_generation",
    "generate_answers",
    "RecEvalCallback",
    "sample_path",
    "load_sample",
    "build_sample",
    "sample_catalogue",
    "find_data_dir",
    "DATA_ENV",
    "write_sample_slice",
    "load_dataframe_pickle",
    "pickle_globals",
    "UnsafePickleError",
    "read_raw_table",
    "read_raw_catalogue",
    "NAME_RULES",
    "build_dataset",
    "find_split_sources",
    "RawFileMismatch",
    "PUBLISHED_SHA256",
    "download_raw",
]

if TYPE_CHECKING:
    from .baselines import baseline_metrics, item_counts, popularity_baseline, random_baseline, transition_baseline
    from .build import PUBLISHED_SHA256, RawFileMismatch, build_dataset, find_split_sources
    from .candidates import (
        catalogue_from_examples,
        leak_check,
        leak_free_candidates,
        make_leak_free_file,
        sdpo_candidates,
    )
    from .download import download_raw
    from .evaluation import (
        RecEvalCallback,
        evaluate_generation,
        evaluate_ranking,
        generate_answers,
        generated_negatives,
        read_hits,
        score_candidates,
    )
    from .metrics import generation_metrics, parse_answer, ranking_metrics, target_ranks
    from .prompts import ANSWER_CUE, COMPACT_TEMPLATE, TEMPLATES, PromptBuilder
    from .raw import NAME_RULES, read_raw_catalogue, read_raw_table
    from .readers import RecDataError, RecExample, read_catalogue, read_examples, split_history, write_examples
    from .safe_pickle import UnsafePickleError, load_dataframe_pickle, pickle_globals
    from .sample import (
        DATA_ENV,
        build_sample,
        find_data_dir,
        load_sample,
        sample_catalogue,
        sample_path,
        write_sample_slice,
    )
    from .training_data import preference_dataset, sample_negatives, sft_dataset


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
