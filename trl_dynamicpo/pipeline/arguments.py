"""Argument dataclasses of the pipeline's commands (a recipe's keys; `trl-dynamicpo <command>` flags).

`trl_dynamicpo.pipeline.command_dataclasses` says which command combines which of these with TRL's own dataclasses
(`sft`: `RecDataArguments`, `trl.SFTConfig`, `trl.ModelConfig`; `train`: `RecDataArguments`, `DynamicPOConfig`,
`trl.ModelConfig`; `eval`: `RecDataArguments`, `EvalArguments`, `trl.ModelConfig`; `sweep`: `SweepArguments`;
`quickstart`: `QuickstartArguments`).

Field names must not collide with those of the TRL dataclasses (for instance `seed` belongs to the trainer
configs, hence `candidate_seed` here).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import LOSS_TYPES
from ..recsys.candidates import NEGATIVE_MODES, NUM_CANDIDATES
from ..recsys.prompts import COMPACT_TEMPLATE, TEMPLATES
from ..variants import VARIANTS


# `candidates` values, and how the logs and summaries name them.
CANDIDATE_MODES = {"leak_free": "leak-free", "file": "file"}
PROTOCOLS = ("ranking", "generation", "both")


@dataclass
class RecDataArguments:
    """Recommendation data: S-DPO / LLaRA-format prompt files and how they become training rows.

    Without `train_file` the LastFM sample bundled with the package is used (3,000 training and 300 validation
    prompts), so every command runs offline out of the box.
    """

    train_file: str | None = field(
        default=None,
        metadata={
            "help": "Training prompts in S-DPO format (JSON list or JSON lines, optionally gzip). Default: the "
            "bundled LastFM sample."
        },
    )
    eval_file: str | None = field(
        default=None,
        metadata={
            "help": "Validation prompts (used for the trainer's evaluation and, without `test_file`, by `eval`). "
            "Default: the bundled LastFM sample's validation split when `train_file` is not set either."
        },
    )
    test_file: str | None = field(
        default=None,
        metadata={"help": "Test prompts for the `eval` command (default: `eval_file`)."},
    )
    items_file: str | None = field(
        default=None,
        metadata={
            "help": "Item catalogue (`items.txt`, `id::name` per line). Used to draw leak-free candidates and to "
            "parse names that contain colons. Default: every item seen in the given files (the bundled sample "
            "ships its catalogue)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Dataset name written into the model card (default: 'lastfm-sample' for the sample)."},
    )
    domain: str = field(
        default="music",
        metadata={
            "help": "Prompt template family.",
            "choices": list(TEMPLATES),
        },
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Your own prompt template with `{history}` and `{candidates}` (overrides `domain`)."},
    )
    separator: str = field(
        default=", ",
        metadata={"help": "How item names are joined in the prompt (history and candidates)."},
    )
    conversational: bool = field(
        default=False,
        metadata={"help": "Build chat messages (the tokenizer's chat template) instead of plain-text prompts."},
    )
    candidates: str = field(
        default="leak_free",
        metadata={
            "help": "Candidate lists: 'leak_free' draws new ones per prompt from the catalogue (seeded by the row, "
            "never by the target; use it for any number you report); 'file' keeps the lists in the files as they "
            "are (for files already made leak-free, e.g. with `trl-dynamicpo leak-free`; on the public "
            "LastFM/Goodreads/Steam files, whose lists leak the target, only to reproduce the papers)."
        },
    )
    num_candidates: int = field(
        default=NUM_CANDIDATES,
        metadata={"help": "Candidates per prompt (target included) for leak-free lists."},
    )
    num_negatives: int | None = field(
        default=15,
        metadata={
            "help": "K, rejected completions per prompt for `train`, drawn from the non-target candidates with a "
            "per-row seed (the paper's main experiments use 15; its public scripts 5). Use -1 for all of them."
        },
    )
    negatives: str = field(
        default="random",
        metadata={
            "help": "`train`: the K rejected completions: 'random' (non-target candidates drawn per row), 'hard' (the K "
            "candidates the starting model ranks highest) or 'generated' (the starting model's own K most likely wrong "
            "answers by beam search, candidates or not); 'hard' and 'generated' are mined once before training.",
            "choices": list(NEGATIVE_MODES),
        },
    )
    candidate_seed: int = field(
        default=0,
        metadata={"help": "Seed of the leak-free candidate lists, the prompt paraphrases and the sampled negatives."},
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={"help": "Use a seeded random subset of this many training prompts (for quick runs)."},
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Use the first this many validation / test prompts (for quick runs)."},
    )
    history_loss: bool = field(
        default=False,
        metadata={
            "help": "`sft`: also put the loss on the history items (next-item prediction at every history position, "
            "on top of the answer; instruction words and candidates stay unlabelled). Strongly helps small models "
            "learn the catalogue (the quickstart and the sweep presets turn it on); a choice to test for real LLMs."
        },
    )
    drop_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop the malformed rows of the data files (counted in the log, per field) instead of stopping "
            "with an error naming the file, row and field. For `train` the same key sets DynamicPOConfig's "
            "`drop_invalid_rows` (the preference rows it finds invalid)."
        },
    )
    rank_eval_samples: int = field(
        default=0,
        metadata={
            "help": "During training, also rank the candidates of this many validation prompts at every evaluation "
            "and log HR@k / NDCG@k as `eval_rank_*` (0: off)."
        },
    )
    rank_eval_steps: int | None = field(
        default=None,
        metadata={
            "help": "Also run that ranking every this many optimiser steps, without the trainer's evaluation loop "
            "(needs rank_eval_samples; per-step HR@1 curves at the cost of one small ranking pass each time)."
        },
    )

    def __post_init__(self):
        if self.candidates == "public":
            raise ValueError(
                "candidates='public' is now written candidates='file': the lists in the files, as they are. The public "
                "LastFM/Goodreads/Steam lists leak the target (`trl-dynamicpo leak-check`); 'leak_free' redraws them."
            )
        if self.candidates not in CANDIDATE_MODES:
            raise ValueError(f"candidates={self.candidates!r}; choose one of {list(CANDIDATE_MODES)}.")
        if self.num_negatives is not None and self.num_negatives == -1:
            self.num_negatives = None
        if self.num_negatives is not None and self.num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive K (or -1 for all candidates); got {self.num_negatives}.")
        if self.num_candidates < 2:
            raise ValueError(f"num_candidates must be at least 2; got {self.num_candidates}.")

    @property
    def uses_sample(self) -> bool:
        """True when no file is given: the bundled LastFM sample is used."""
        return self.train_file is None and self.eval_file is None and self.test_file is None


@dataclass
class EvalArguments:
    """How `trl-dynamicpo eval` evaluates a model (the paper's generation protocol and/or candidate ranking)."""

    protocol: str = field(
        default="ranking",
        metadata={
            "help": "'ranking': rank the candidates by log pi(candidate | prompt) (HR@1/5, NDCG@1/5, MRR; no invalid "
            "answers possible); 'generation': greedy answer, HitRatio@1 and ValidRatio as in the papers; 'both'.",
            "choices": list(PROTOCOLS),
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where metrics.json (all protocols) and per-protocol predictions go. Default: `<model>/eval` for "
            "a local model folder, else `./eval`."
        },
    )
    split: str = field(
        default="auto",
        metadata={
            "help": "Which file to evaluate: 'test' (test_file), 'eval' (eval_file) or 'auto' (test_file if set, "
            "else eval_file).",
            "choices": ["auto", "test", "eval"],
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per forward pass / generate call, per process."})
    max_new_tokens: int = field(default=20, metadata={"help": "Generation budget (20 in the papers)."})
    baselines: bool = field(
        default=True,
        metadata={
            "help": "Also report the non-LLM baselines (random, popularity, transitions) and the candidate-list leak "
            "check, computed from the training prompts (needs `train_file` or the sample)."
        },
    )
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    merge_adapter: bool = field(
        default=True,
        metadata={"help": "Merge a LoRA adapter into a non-quantized base model before evaluating (faster)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed (set before evaluating; greedy decoding is deterministic)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})


@dataclass
class QuickstartArguments:
    """The offline demo: tiny tokenizer and model from the bundled LastFM sample, SFT, DynamicPO, evaluation."""

    output_dir: str = field(
        default="dynamicpo-quickstart",
        metadata={"help": "Everything goes here: base model, SFT and DynamicPO outputs, metrics.json, the plot."},
    )
    tiny: bool = field(
        default=False,
        metadata={"help": "CI mode: a few hundred prompts, a smaller model and a handful of steps (well under a minute)."},
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": "Cap the optimiser steps of each stage (SFT and DynamicPO)."},
    )
    train_samples: int | None = field(
        default=None, metadata={"help": "Training prompts from the sample (default: all 3,000; 128 with --tiny)."}
    )
    eval_samples: int | None = field(
        default=None, metadata={"help": "Validation prompts to evaluate (default: all 300; 32 with --tiny)."}
    )
    catalogue_size: int = field(
        default=0,
        metadata={
            "help": "0: every prompt and artist of the sample. N > 0: only the prompts whose target is one of the "
            "sample's N most listened-to artists, with leak-free candidates drawn from them (a smaller problem)."
        },
    )
    template: str | None = field(
        default=COMPACT_TEMPLATE,
        metadata={"help": "Prompt template with {history} and {candidates} (default: the compact one; 'none' for the "
                  "'music' paraphrases)."},  # fmt: skip
    )
    separator: str = field(default=",", metadata={"help": "How item names are joined in the prompt."})
    history_loss: bool = field(
        default=True, metadata={"help": "SFT loss on the history items as well as the answer (see `sft --help`)."}
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Model width (default 128; 32 with --tiny)."})
    num_layers: int | None = field(default=None, metadata={"help": "Transformer layers (default 2; 1 with --tiny)."})
    sft_epochs: float = field(default=3.0, metadata={"help": "SFT epochs."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "SFT learning rate."})
    dpo_epochs: float = field(default=0.5, metadata={"help": "DynamicPO epochs (half an epoch keeps the quickstart under 3 minutes on 2 cores)."})
    dpo_learning_rate: float = field(default=1e-4, metadata={"help": "DynamicPO learning rate."})
    beta: float = field(default=1.0, metadata={"help": "DynamicPO base beta."})
    num_negatives: int = field(default=19, metadata={"help": "K negatives per prompt for DynamicPO (19: every other candidate)."})
    multi_negative_loss: str = field(
        default="dmpo", metadata={"help": "Base objective.", "choices": list(LOSS_TYPES)}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "Per-device batch size of both stages (default 32; 16 with --tiny)."}
    )
    report_to: str = field(
        default="auto",
        metadata={"help": "'tensorboard', 'none' or 'auto' (TensorBoard when it is installed; always offline)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the model initialisation and training."})
    plot: bool = field(default=True, metadata={"help": "Write quickstart.png (needs matplotlib)."})
    show_progress: bool = field(default=True, metadata={"help": "Show progress bars."})


@dataclass
class SweepArguments:
    """The grid and the outputs of `trl-dynamicpo sweep` (the recipe's own keys set everything else)."""

    sweep_dir: str = field(default="sweep", metadata={"help": "Where runs, results, tables and plots go."})
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10, 15, 19], metadata={"help": "Values of K."})
    objectives: list[str] = field(
        default_factory=lambda: list(LOSS_TYPES),
        metadata={"help": f"Base objectives (default: all of {', '.join(LOSS_TYPES)})."},
    )
    variants: list[str] = field(
        default_factory=lambda: ["plain", "dynamicpo"],
        metadata={"help": f"Switch settings: {', '.join(VARIANTS)} (trl_dynamicpo.variants)."},
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Training seeds of the main grid."})
    ablation_ks: list[int] = field(
        default_factory=list, metadata={"help": "Also run DMPO selection_only and beta_only at these K."}
    )
    extra_seeds: list[int] = field(
        default_factory=list, metadata={"help": "More seeds for DMPO plain and DynamicPO (at extra_seed_ks)."}
    )
    extra_seed_ks: list[int] = field(
        default_factory=list, metadata={"help": "K values of the extra seeds (default: all of ks)."}
    )
    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra evaluation files (S-DPO format), each evaluated like the recipe's eval split."},
    )
    sft_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Recipe keys set for the sft stage, KEY=VALUE each (VALUE read as YAML): max_steps=10."},
    )
    train_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "Recipe keys set for every train run, KEY=VALUE each: learning_rate=1e-4 beta=0.5."},
    )
    eval_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Recipe keys set for every evaluation, KEY=VALUE each."}
    )
    keep_models: bool = field(default=True, metadata={"help": "Keep each run's trained model (or adapter)."})
    title: str = field(default="DynamicPO sweep", metadata={"help": "Title of summary.md."})
