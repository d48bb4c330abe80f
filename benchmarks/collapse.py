"""Collapse benchmark: multi-negative preference optimisation vs K, plain objectives vs DynamicPO, at laptop scale.

What it does, for one candidate-list protocol (`--protocol leak_free`, the default, or the papers' leaky `public`):

1. Reads LastFM-format prompts (`--train`, `--eval`, `--items`; default `/work/shared/data/lastfm/` when it exists,
   else the sample bundled with the package) and, for `leak_free`, rebuilds every candidate list from (history,
   target, catalogue) with `trl_dynamicpo.recsys.leak_free_candidates` (per-prompt streams, never the target).
   Prompts keep the last `history_len` history items and all candidates; every item name is one token.
2. Builds an offline tokenizer and a small causal LM from a config (`trl_dynamicpo.tiny`), runs SFT with TRL's
   `SFTTrainer` on prompt/completion rows (completion-only loss) and caches the result on disk, keyed by its
   settings (`--cache-dir`, git-ignored `outputs/` by default), so later runs reuse it.
3. Scores every candidate of the preference-training prompts once with the SFT model (the reference model's
   log-probs, shared by all runs through `precompute_ref_log_probs=True`) and runs `DynamicPOTrainer` from the SFT
   model for every grid point: K x objective (dmpo, sdpo, mppo) x {plain, DynamicPO} plus the DMPO ablations
   (selection only, dynamic beta only), for one or more seeds.
4. Evaluates with the ranking protocol (`evaluate_ranking`: HR@1, NDCG@5 over the 20 candidates) on a fixed subset
   during training and on the whole evaluation file at the end, and with the papers' generation protocol
   (`evaluate_generation`, greedy, 20 new tokens) at the end; the SFT model and the non-LLM baselines
   (`baseline_metrics`) are reference lines.
5. Writes `runs.csv` (one row per run, plus reference rows), `curves.csv` (per logging step), `meta.json`,
   `summary.md` and PNG plots under `--output-dir` (default `benchmarks/results/collapse_<protocol>/`), and prints a
   compact table.

Every finished run is cached as JSON under the cache directory, so an interrupted benchmark resumes where it stopped
(`--fresh` ignores the cache). Examples::

    python benchmarks/collapse.py --preset smoke                      # ~1 minute, bundled sample
    python benchmarks/collapse.py --preset quick --protocol leak_free  # ~10 minutes
    python benchmarks/collapse.py --preset full --protocol public      # the whole grid

On CPU, TRL's fused LM head scores every position of a row (it keeps tile shapes fixed for compilers), which for
these short completions costs more than the whole transformer. The benchmark makes it score only the labelled
positions (the log-probs are identical; `--no-compact-head` keeps TRL's behaviour).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path("/work/shared/data/lastfm")
OBJECTIVES = ("dmpo", "sdpo", "mppo")
# variant -> (boundary_selection, dynamic_beta)
VARIANTS = {
    "plain": (False, False),
    "dynamicpo": (True, True),
    "selection_only": (True, False),
    "beta_only": (False, True),
}
TEMPLATE = "History: {history}.\nCandidates: {candidates}."
SEPARATOR = ","
LOGGED_KEYS = {
    "loss": "loss",
    "rewards/accuracies": "reward_acc",
    "rewards/margins": "reward_margin",
    "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected",
    "dynamicpo/boundary_negatives": "boundary_negatives",
    "dynamicpo/clustering_fallback": "clustering_fallback",
    "dynamicpo/beta_mean": "beta_mean",
    "dynamicpo/d_pb": "d_pb",
    "dynamicpo/d_be": "d_be",
    "dynamicpo/boundary_grad_share": "boundary_grad_share",
}
RUN_COLUMNS = [
    "kind", "protocol", "objective", "variant", "boundary_selection", "dynamic_beta", "k", "seed",
    "hr1", "ndcg5", "hr5", "mrr", "n_eval",
    "gen_hr1", "gen_valid_ratio", "n_gen",
    "best_hr1_subset", "best_step", "final_hr1_subset", "sft_hr1_subset", "n_eval_subset",
    "loss_first", "loss_final", "reward_acc_final", "reward_margin_final", "logp_chosen_final", "logp_rejected_final",
    "boundary_negatives_final", "clustering_fallback_final", "beta_mean_final", "d_pb_final", "d_be_final",
    "boundary_grad_share_mean", "boundary_grad_share_final",
    "steps", "learning_rate", "beta", "batch_size", "n_train", "step_time_s", "train_time_s", "eval_time_s",
]  # fmt: skip
CURVE_COLUMNS = ["objective", "variant", "k", "seed", "step", "metric", "value"]


# ---------------------------------------------------------------------------------------------------------- presets
@dataclasses.dataclass
class Preset:
    # data
    history_len: int = 10
    n_sft: int = 20000
    n_po: int = 1024
    n_eval_subset: int = 200  # mid-training evaluations (a subset of the final evaluation prompts)
    n_eval_final: int | None = 1000  # None: the whole evaluation file
    n_gen_final: int | None = 1000
    gen_max_new_tokens: int = 20
    tokenizer_vocab: int = 400
    # model
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    tie_embeddings: bool = True
    # SFT
    sft_steps: int = 1500
    sft_batch: int = 32
    sft_lr: float = 3e-3
    # preference optimisation
    po_steps: int = 150
    po_batch: int = 16
    po_lr: float = 1e-3
    po_scheduler: str = "constant_with_warmup"
    po_warmup_ratio: float = 0.05
    beta: float = 1.0
    max_grad_norm: float = 1.0
    log_every: int = 5
    eval_every: int = 50
    # grid
    ks: tuple[int, ...] = (1, 3, 5, 10, 15, 19)
    objectives: tuple[str, ...] = OBJECTIVES
    variants: tuple[str, ...] = ("plain", "dynamicpo")
    ablation_ks: tuple[int, ...] = (5, 15, 19)  # DMPO selection_only / beta_only
    seeds: tuple[int, ...] = (0,)
    extra_seeds: tuple[int, ...] = ()  # more seeds for DMPO plain and DynamicPO at `extra_seed_ks` only
    extra_seed_ks: tuple[int, ...] = (1, 5, 19)
    sample_data: bool = False  # use the bundled sample even when the shared data exists


PRESETS: dict[str, Preset] = {
    # End-to-end check in well under a minute: the bundled sample, a minute model, 2 grid points.
    "smoke": Preset(
        n_sft=256, n_po=32, n_eval_subset=24, n_eval_final=48, n_gen_final=16, gen_max_new_tokens=4,
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, sft_steps=8, sft_batch=16, po_steps=4,
        po_batch=8, log_every=1, eval_every=2, ks=(3,), objectives=("dmpo",), ablation_ks=(), sample_data=True,
    ),
    # About 10 minutes from scratch on a 2-core machine: a shorter SFT (its own cache entry), then DMPO at K = 1 and
    # 19, plain vs DynamicPO, on 500 evaluation prompts.
    "quick": Preset(
        sft_steps=500, n_eval_subset=200, n_eval_final=500, n_gen_final=200, ks=(1, 19), objectives=("dmpo",),
        ablation_ks=(),
    ),
    # The whole grid for one protocol: 36 main runs + 6 DMPO ablations + DMPO plain / DynamicPO at K = 1, 5, 19 with
    # two more seeds (12 runs); about 60 minutes per protocol on one core of an idle 2-core machine.
    "full": Preset(extra_seeds=(1, 2)),
}  # fmt: skip


# ------------------------------------------------------------------------------------------------------------- utils
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def stable_hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def file_identity(path: Path) -> dict[str, Any]:
    """Name, size and content hash: cache keys survive copies and re-downloads of the same file."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    return {"name": path.name, "size": path.stat().st_size, "sha1": digest, "path": str(path.resolve())}


def content_key(identity: dict[str, Any] | None) -> dict[str, Any] | None:
    """A file identity without its location, for cache keys."""
    return None if identity is None else {k: v for k, v in identity.items() if k != "path"}


def progress_callback(label: str, every: int):
    """A callback that logs the training loss every `every` steps (the trainer's own printer is removed)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.global_step % every == 0:
                log(f"{label}: step {state.global_step}/{state.max_steps}, loss {logs['loss']:.4f}")

    return Progress()


def mean_or_nan(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


# -------------------------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class Data:
    protocol: str
    catalogue: list[str]
    sft: list  # RecExample
    po: list
    eval_all: list
    eval_subset: list
    train_all: list
    files: dict[str, Any]


def resolve_paths(args, preset: Preset) -> tuple[Path, Path, Path | None]:
    from trl_dynamicpo.recsys import sample_path

    default_dir = SHARED_DATA if SHARED_DATA.is_dir() and not preset.sample_data else None
    if default_dir is not None:
        defaults = (default_dir / "train.jsonl.gz", default_dir / "val.jsonl.gz", default_dir / "items.txt")
    else:
        defaults = (sample_path("train"), sample_path("val"), sample_path("items"))
    train = Path(args.train) if args.train else defaults[0]
    evaluation = Path(args.eval) if args.eval else defaults[1]
    if args.items:
        items = Path(args.items)
    elif args.train is None:
        items = defaults[2]
    else:
        guess = train.parent / "items.txt"
        items = guess if guess.exists() else None
    return train, evaluation, items


def shorten(examples, history_len: int):
    from trl_dynamicpo.recsys import RecExample

    return [RecExample(list(ex.history[-history_len:]), list(ex.candidates), ex.target) for ex in examples]


def load_data(args, preset: Preset) -> Data:
    from trl_dynamicpo.recsys import catalogue_from_examples, leak_free_candidates, read_catalogue, read_examples

    train_path, eval_path, items_path = resolve_paths(args, preset)
    catalogue = read_catalogue(items_path) if items_path is not None else None
    train = read_examples(train_path, catalogue=catalogue)
    evaluation = read_examples(eval_path, catalogue=catalogue)
    if catalogue is None:
        catalogue = catalogue_from_examples(train)
    if args.protocol == "leak_free":
        # The full histories decide which items may not be drawn as negatives; prompts are shortened afterwards.
        train = leak_free_candidates(train, catalogue, num_candidates=20, seed=args.data_seed)
        evaluation = leak_free_candidates(evaluation, catalogue, num_candidates=20, seed=args.data_seed)
    train = shorten(train, preset.history_len)
    evaluation = shorten(evaluation, preset.history_len)

    order = list(range(len(train)))
    random.Random(args.data_seed).shuffle(order)
    n_sft = min(preset.n_sft, len(train))
    sft_idx = order[:n_sft]
    rest = order[n_sft:]
    # Preference prompts are disjoint from the SFT ones when the file is large enough.
    po_idx = rest[: preset.n_po] if len(rest) >= preset.n_po else order[-preset.n_po :]
    eval_order = list(range(len(evaluation)))
    random.Random(args.data_seed + 1).shuffle(eval_order)
    final_idx = sorted(eval_order[: preset.n_eval_final]) if preset.n_eval_final else list(range(len(evaluation)))
    subset_idx = sorted(eval_order[: preset.n_eval_subset])
    files = {
        "train": file_identity(train_path),
        "eval": file_identity(eval_path),
        "items": file_identity(items_path) if items_path is not None else None,
    }
    return Data(
        protocol=args.protocol,
        catalogue=list(catalogue),
        sft=[train[i] for i in sft_idx],
        po=[train[i] for i in po_idx],
        eval_all=[evaluation[i] for i in final_idx],
        eval_subset=[evaluation[i] for i in subset_idx],
        train_all=train,
        files=files,
    )


def make_builder():
    from trl_dynamicpo.recsys import PromptBuilder

    return PromptBuilder(template=TEMPLATE, separator=SEPARATOR)


# ---------------------------------------------------------------------------------------------------- model and SFT
def build_tokenizer(data: Data, builder, preset: Preset):
    from trl_dynamicpo.tiny import build_tokenizer as tiny_tokenizer

    names = set(data.catalogue)
    for ex in data.train_all:
        names.update(ex.history)
        names.update(ex.candidates)
    texts = [builder.build(ex, i) + builder.completion(ex.target) for i, ex in enumerate(data.sft[:2000])]
    return tiny_tokenizer(texts, vocab_size=preset.tokenizer_vocab, items=sorted(names))


def token_stats(tokenizer, builder, examples) -> dict[str, float]:
    """Prompt lengths in tokens and the share of candidate completions that are [space, item, EOS]."""
    from trl_dynamicpo.preprocessing import tokenize_completions

    lengths, one_token, total = [], 0, 0
    for i, ex in enumerate(examples[:300]):
        prompt_ids, comps = tokenize_completions(
            tokenizer, builder.build(ex, i), [builder.completion(c) for c in ex.candidates], add_eos=True
        )
        lengths.append(len(prompt_ids))
        one_token += sum(len(c) == 3 for c in comps)
        total += len(comps)
    return {
        "prompt_tokens_mean": statistics.fmean(lengths),
        "prompt_tokens_max": max(lengths),
        "completion_one_item_token_share": one_token / max(total, 1),
    }


def build_model(tokenizer, preset: Preset, seed: int):
    from trl_dynamicpo.tiny import build_tiny_model

    model = build_tiny_model(
        tokenizer,
        hidden_size=preset.hidden_size,
        num_layers=preset.num_layers,
        num_heads=preset.num_heads,
        num_kv_heads=preset.num_kv_heads,
        intermediate_size=2 * preset.hidden_size,
        max_position_embeddings=512,
        seed=seed,
        tie_embeddings=preset.tie_embeddings,
    )
    return model


def sft_settings(data: Data, preset: Preset, args) -> dict[str, Any]:
    return {
        "version": 1,
        "protocol": data.protocol,
        "train": content_key(data.files["train"]),
        "items": content_key(data.files["items"]),
        "data_seed": args.data_seed,
        "template": TEMPLATE,
        "separator": SEPARATOR,
        "history_len": preset.history_len,
        "n_sft": len(data.sft),
        "tokenizer_vocab": preset.tokenizer_vocab,
        "model": [preset.hidden_size, preset.num_layers, preset.num_heads, preset.num_kv_heads, preset.tie_embeddings],
        "sft": [preset.sft_steps, preset.sft_batch, preset.sft_lr],
    }


def train_or_load_sft(data: Data, builder, preset: Preset, args, cache: Path):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from trl_dynamicpo.recsys import sft_dataset

    settings = sft_settings(data, preset, args)
    key = stable_hash(settings)
    sft_dir = cache / f"sft-{data.protocol}-{key}"
    info_path = sft_dir / "sft_info.json"
    if info_path.exists() and not args.fresh_sft:
        log(f"SFT: reusing cached model {sft_dir}")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(sft_dir)
        model = AutoModelForCausalLM.from_pretrained(sft_dir)
        return model, tokenizer, sft_dir, json.loads(info_path.read_text())

    tokenizer = build_tokenizer(data, builder, preset)
    model = build_model(tokenizer, preset, seed=args.data_seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"SFT: {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}, {len(data.sft)} prompts, "
        f"{preset.sft_steps} steps")  # fmt: skip
    config = SFTConfig(
        output_dir=str(cache / "tmp-sft"),
        per_device_train_batch_size=preset.sft_batch,
        max_steps=preset.sft_steps,
        learning_rate=preset.sft_lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, int(0.05 * preset.sft_steps)),
        weight_decay=0.0,
        completion_only_loss=True,
        max_length=512,
        bf16=False,
        logging_steps=max(1, preset.sft_steps // 20),
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=args.data_seed,
        dataloader_num_workers=0,
    )
    start = time.time()
    trainer = SFTTrainer(model=model, args=config, train_dataset=sft_dataset(data.sft, builder), processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback("SFT", max(1, preset.sft_steps // 10)))
    prepared = time.time()
    trainer.train()
    elapsed = time.time() - start
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    info = {
        "settings": settings,
        "parameters": n_params,
        "vocab": len(tokenizer),
        "train_time_s": elapsed,
        "step_time_s": (time.time() - prepared) / preset.sft_steps,
        "loss": losses,
    }
    sft_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    info_path.write_text(json.dumps(info, indent=1))
    log(f"SFT: done in {elapsed:.0f}s, final loss {losses[-1][1] if losses else float('nan'):.3f}; cached in {sft_dir}")
    return model, tokenizer, sft_dir, info


# ------------------------------------------------------------------------------------------------------- evaluation
def rank_eval(model, tokenizer, examples, builder) -> dict[str, float]:
    from trl_dynamicpo.recsys import evaluate_ranking

    return evaluate_ranking(model, tokenizer, examples, builder, batch_size=64, show_progress=False)


def gen_eval(model, tokenizer, examples, builder, max_new_tokens: int) -> dict[str, float]:
    from trl_dynamicpo.recsys import evaluate_generation

    return evaluate_generation(
        model, tokenizer, examples, builder, batch_size=64, max_new_tokens=max_new_tokens, show_progress=False
    )


def reference_scores(model, tokenizer, examples, builder, cache_file: Path) -> list[dict[str, float]]:
    """log pi_SFT(candidate | prompt) for every candidate of every preference prompt, keyed by completion text."""
    from trl_dynamicpo import score_completions

    if cache_file.exists():
        return json.loads(cache_file.read_text())
    prompts = [builder.build(ex, i) for i, ex in enumerate(examples)]
    completions = [[builder.completion(c) for c in ex.candidates] for ex in examples]
    scores = score_completions(model, tokenizer, prompts, completions, batch_size=32, show_progress=False)
    table = [dict(zip(comps, row)) for comps, row in zip(completions, scores)]
    cache_file.write_text(json.dumps(table))
    return table


# --------------------------------------------------------------------------------------------------------- PO runs
@dataclasses.dataclass(frozen=True)
class GridPoint:
    objective: str
    variant: str
    k: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.objective}-{self.variant}-k{self.k}-s{self.seed}"


def build_grid(preset: Preset) -> list[GridPoint]:
    points = []
    for seed in preset.seeds:
        for objective in preset.objectives:
            for variant in preset.variants:
                points += [GridPoint(objective, variant, k, seed) for k in preset.ks]
        if "dmpo" in preset.objectives:
            for variant in ("selection_only", "beta_only"):
                points += [GridPoint("dmpo", variant, k, seed) for k in preset.ablation_ks]
    for seed in preset.extra_seeds:
        if seed in preset.seeds:
            continue
        for variant in ("plain", "dynamicpo"):
            points += [GridPoint("dmpo", variant, k, seed) for k in preset.extra_seed_ks if k in preset.ks]
    return list(dict.fromkeys(points))


def _subset_eval_callback(evaluate, every: int):
    from transformers import TrainerCallback

    class SubsetEval(TrainerCallback):
        """Ranking HR@1 / NDCG@5 on the fixed evaluation subset every `every` steps (time kept apart)."""

        def __init__(self):
            self.history: list[dict[str, float]] = []
            self.seconds = 0.0

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every and state.global_step != state.max_steps:
                return
            start = time.time()
            metrics = evaluate(model)
            self.seconds += time.time() - start
            self.history.append({"step": state.global_step, "hr1": metrics["hr@1"], "ndcg5": metrics["ndcg@5"]})

    return SubsetEval()


def run_point(point: GridPoint, ctx: dict[str, Any]) -> dict[str, Any]:
    """Train one grid point from the SFT model and evaluate it; returns the result record."""
    from transformers import AutoModelForCausalLM, PrinterCallback

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
    from trl_dynamicpo.recsys import preference_dataset

    preset: Preset = ctx["preset"]
    data: Data = ctx["data"]
    builder, tokenizer = ctx["builder"], ctx["tokenizer"]
    selection, dynamic_beta = VARIANTS[point.variant]
    policy = AutoModelForCausalLM.from_pretrained(ctx["sft_dir"])
    dataset = preference_dataset(data.po, builder, num_negatives=point.k, seed=point.seed)
    if point.objective != "mppo":
        ref = ctx["ref_scores"]
        dataset = dataset.add_column("ref_chosen_logps", [ref[i][c] for i, c in enumerate(dataset["chosen"])])
        dataset = dataset.add_column(
            "ref_rejected_logps", [[ref[i][r] for r in rej] for i, rej in enumerate(dataset["rejected"])]
        )
    config = DynamicPOConfig(
        output_dir=str(ctx["cache"] / "tmp-po"),
        multi_negative_loss=point.objective,
        boundary_selection=selection,
        dynamic_beta=dynamic_beta,
        beta=preset.beta,
        learning_rate=preset.po_lr,
        lr_scheduler_type=preset.po_scheduler,
        warmup_steps=max(1, int(preset.po_warmup_ratio * preset.po_steps)) if preset.po_warmup_ratio else 0,
        max_grad_norm=preset.max_grad_norm,
        weight_decay=0.0,
        per_device_train_batch_size=preset.po_batch,
        max_steps=preset.po_steps,
        precompute_ref_log_probs=True,  # the SFT model's log-probs, computed once for all runs
        bf16=False,
        logging_steps=preset.log_every,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=point.seed,
        data_seed=point.seed,
        dataloader_num_workers=0,
    )
    subset = data.eval_subset
    callback = _subset_eval_callback(lambda m: rank_eval(m, tokenizer, subset, builder), preset.eval_every)
    start = time.time()
    trainer = DynamicPOTrainer(
        model=policy, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback]
    )
    trainer.remove_callback(PrinterCallback)
    prepared = time.time()
    trainer.train()
    train_time = time.time() - prepared - callback.seconds
    eval_start = time.time()
    final = rank_eval(trainer.model, tokenizer, data.eval_all, builder)
    generation = gen_eval(trainer.model, tokenizer, data.gen, builder, preset.gen_max_new_tokens)
    eval_time = time.time() - eval_start + callback.seconds

    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    curves = [
        {"step": h["step"], **{short: h[key] for key, short in LOGGED_KEYS.items() if key in h}} for h in logs
    ]
    subset_history = [{"step": 0, "hr1": ctx["sft_subset"]["hr@1"], "ndcg5": ctx["sft_subset"]["ndcg@5"]}]
    subset_history += callback.history
    best = max(subset_history[1:] or subset_history, key=lambda h: h["hr1"])

    def last(metric):
        return curves[-1].get(metric, float("nan")) if curves else float("nan")

    row = {
        "kind": "po",
        "protocol": data.protocol,
        "objective": point.objective,
        "variant": point.variant,
        "boundary_selection": selection,
        "dynamic_beta": dynamic_beta,
        "k": point.k,
        "seed": point.seed,
        "hr1": final["hr@1"],
        "ndcg5": final["ndcg@5"],
        "hr5": final["hr@5"],
        "mrr": final["mrr"],
        "n_eval": final["n"],
        "gen_hr1": generation["hr@1"],
        "gen_valid_ratio": generation["valid_ratio"],
        "n_gen": generation["n"],
        "best_hr1_subset": best["hr1"],
        "best_step": best["step"],
        "final_hr1_subset": subset_history[-1]["hr1"],
        "sft_hr1_subset": ctx["sft_subset"]["hr@1"],
        "n_eval_subset": len(subset),
        "loss_first": curves[0]["loss"] if curves else float("nan"),
        "loss_final": last("loss"),
        "reward_acc_final": last("reward_acc"),
        "reward_margin_final": last("reward_margin"),
        "logp_chosen_final": last("logp_chosen"),
        "logp_rejected_final": last("logp_rejected"),
        "boundary_negatives_final": last("boundary_negatives"),
        "clustering_fallback_final": last("clustering_fallback"),
        "beta_mean_final": last("beta_mean"),
        "d_pb_final": last("d_pb"),
        "d_be_final": last("d_be"),
        "boundary_grad_share_mean": mean_or_nan([c.get("boundary_grad_share") for c in curves]),
        "boundary_grad_share_final": last("boundary_grad_share"),
        "steps": trainer.state.global_step,
        "learning_rate": preset.po_lr,
        "beta": preset.beta,
        "batch_size": preset.po_batch,
        "n_train": len(dataset),
        "step_time_s": train_time / max(trainer.state.global_step, 1),
        "train_time_s": train_time,
        "eval_time_s": eval_time,
    }
    return {"row": row, "curves": curves, "subset_history": subset_history, "setup_time_s": prepared - start}


# ---------------------------------------------------------------------------------------------------------- outputs
def reference_rows(protocol: str, sft_final, sft_gen, sft_subset, baselines, leak) -> list[dict[str, Any]]:
    rows = [
        {
            "kind": "reference", "protocol": protocol, "objective": "sft", "variant": "sft", "k": 0,
            "hr1": sft_final["hr@1"], "ndcg5": sft_final["ndcg@5"], "hr5": sft_final["hr@5"], "mrr": sft_final["mrr"],
            "n_eval": sft_final["n"], "gen_hr1": sft_gen["hr@1"], "gen_valid_ratio": sft_gen["valid_ratio"],
            "n_gen": sft_gen["n"], "final_hr1_subset": sft_subset["hr@1"], "sft_hr1_subset": sft_subset["hr@1"],
        }
    ]  # fmt: skip
    for name, metrics in baselines.items():
        rows.append(
            {
                "kind": "reference", "protocol": protocol, "objective": f"baseline:{name}", "variant": name, "k": 0,
                "hr1": metrics["hr@1"], "ndcg5": metrics["ndcg@5"], "hr5": metrics["hr@5"], "mrr": metrics["mrr"],
                "n_eval": metrics["n"],
            }
        )  # fmt: skip
    rows.append(
        {
            "kind": "reference", "protocol": protocol, "objective": "baseline:candidate_lookup",
            "variant": "candidate_lookup", "k": 0, "hr1": leak["hit_rate"], "n_eval": leak["n"],
        }
    )  # fmt: skip
    return rows


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    def fmt(value):
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.6g}"
        return value

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: fmt(row.get(c, "")) for c in columns})


def curve_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        r = result["row"]
        base = {"objective": r["objective"], "variant": r["variant"], "k": r["k"], "seed": r["seed"]}
        for entry in result["curves"]:
            for metric, value in entry.items():
                if metric != "step":
                    rows.append({**base, "step": entry["step"], "metric": metric, "value": value})
        for entry in result["subset_history"]:
            rows.append({**base, "step": entry["step"], "metric": "hr1_subset", "value": entry["hr1"]})
            rows.append({**base, "step": entry["step"], "metric": "ndcg5_subset", "value": entry["ndcg5"]})
    return rows


def aggregate(rows: list[dict[str, Any]], metric: str = "hr1") -> dict[tuple[str, str, int], list[float]]:
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "po":
            groups[(r["objective"], r["variant"], r["k"])].append(r[metric])
    return groups


def summary_table(rows: list[dict[str, Any]], metric: str = "hr1") -> tuple[list[str], list[list[str]]]:
    """Header and body of the objective x variant by K table of `metric` (mean, +-std over seeds when > 1)."""
    groups = aggregate(rows, metric)
    ks = sorted({k for (_, _, k) in groups})
    header = ["objective", "variant", *[f"K={k}" for k in ks]]
    body = []
    order = [(o, v) for o in OBJECTIVES for v in VARIANTS]
    for objective, variant in order:
        cells = []
        for k in ks:
            values = groups.get((objective, variant, k))
            if not values:
                cells.append("")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.fmean(values):.3f}±{statistics.stdev(values):.3f} (n={len(values)})")
        if any(cells):
            body.append([objective, variant, *cells])
    return header, body


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


REFERENCE_STYLE = {
    "sft": ("k", ":", "SFT (start of PO)"),
    "baseline:popularity": ("0.55", "-.", "popularity"),
    "baseline:transition": ("0.35", "--", "transition"),
}
VARIANT_STYLE = {
    "plain": {"color": "tab:red", "linestyle": "-", "marker": "o", "label": "plain"},
    "dynamicpo": {"color": "tab:blue", "linestyle": "-", "marker": "s", "label": "DynamicPO"},
    "selection_only": {"color": "tab:green", "linestyle": "--", "marker": "^", "label": "selection only"},
    "beta_only": {"color": "tab:purple", "linestyle": "--", "marker": "v", "label": "dynamic beta only"},
}


def plot_all(out: Path, rows: list[dict[str, Any]], results: list[dict[str, Any]], protocol: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = {r["objective"]: r for r in rows if r.get("kind") == "reference"}
    objectives = [o for o in OBJECTIVES if any(r.get("objective") == o for r in rows)]
    written = []

    def save(fig, name: str, dpi: int) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=dpi)
        plt.close(fig)
        written.append(out / name)

    # 1. HR@1 vs K, ranking (top) and generation (bottom), one column per objective.
    fig, axes = plt.subplots(2, len(objectives), figsize=(4.2 * len(objectives), 6.4), squeeze=False, sharey="row")
    for row_i, (metric, ref_metric, title) in enumerate(
        [("hr1", "hr1", "ranking HR@1 (all eval prompts)"), ("gen_hr1", "gen_hr1", "generation HR@1 (greedy)")]
    ):
        groups = aggregate(rows, metric)
        for col, objective in enumerate(objectives):
            ax = axes[row_i][col]
            for variant, style in VARIANT_STYLE.items():
                ks = sorted(k for (o, v, k) in groups if o == objective and v == variant)
                if not ks:
                    continue
                values = [groups[(objective, variant, k)] for k in ks]
                ax.plot(ks, [statistics.fmean(v) for v in values], **style, markersize=4)
                if any(len(v) > 1 for v in values):
                    ax.fill_between(ks, [min(v) for v in values], [max(v) for v in values], color=style["color"],
                                    alpha=0.15)  # fmt: skip
            for name, (color, linestyle, label) in REFERENCE_STYLE.items():
                ref = refs.get(name)
                if ref is not None and ref.get(ref_metric) not in (None, ""):
                    ax.axhline(ref[ref_metric], color=color, linestyle=linestyle, linewidth=1.2, label=label)
            if groups:
                ax.set_xticks(sorted({k for (_, _, k) in groups}))
            ax.set_title(f"{objective.upper()}: {title}", fontsize=9)
            ax.set_xlabel("K (negatives per prompt)")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("HR@1")
        axes[row_i][0].legend(fontsize=7)
    fig.suptitle(f"HR@1 vs K, plain vs DynamicPO ({protocol} candidates)", fontsize=10)
    save(fig, "hr1_vs_k.png", dpi=80)

    # 2. Training loss and subset HR@1 vs step (first seed), one row per objective, K as colour.
    seed0 = min((r["row"]["seed"] for r in results), default=0)
    chosen = [r for r in results if r["row"]["seed"] == seed0 and r["row"]["variant"] in ("plain", "dynamicpo")]
    ks = sorted({r["row"]["k"] for r in chosen})
    cmap = plt.get_cmap("viridis")
    colour = {k: cmap(i / max(len(ks) - 1, 1)) for i, k in enumerate(ks)}
    fig, axes = plt.subplots(len(objectives), 3, figsize=(13, 3.0 * len(objectives)), squeeze=False)
    for row_i, objective in enumerate(objectives):
        for result in chosen:
            r = result["row"]
            if r["objective"] != objective:
                continue
            style = "-" if r["variant"] == "plain" else "--"
            steps = [c["step"] for c in result["curves"]]
            axes[row_i][0].plot(steps, [c.get("loss") for c in result["curves"]], style, color=colour[r["k"]],
                                linewidth=1, label=f"K={r['k']} {VARIANT_STYLE[r['variant']]['label']}")  # fmt: skip
            hist = result["subset_history"]
            axes[row_i][1].plot([h["step"] for h in hist], [h["hr1"] for h in hist], style, color=colour[r["k"]],
                                marker=".", linewidth=1)  # fmt: skip
            axes[row_i][2].plot(steps, [c.get("reward_acc") for c in result["curves"]], style, color=colour[r["k"]],
                                linewidth=1)  # fmt: skip
        if "sft" in refs:
            axes[row_i][1].axhline(refs["sft"]["final_hr1_subset"], color="k", linestyle=":", linewidth=1)
        axes[row_i][0].set_ylabel(objective.upper())
        axes[row_i][0].set_title("training loss (solid plain, dashed DynamicPO)", fontsize=9)
        axes[row_i][1].set_title("ranking HR@1, mid-training subset (dotted: SFT)", fontsize=9)
        axes[row_i][2].set_title("reward accuracy (chosen above every negative)", fontsize=9)
        for ax in axes[row_i]:
            ax.grid(alpha=0.3)
            ax.set_xlabel("step")
    axes[0][0].legend(fontsize=6, ncol=2)
    save(fig, "curves.png", dpi=70)

    # 3. Gradient share of boundary negatives and |B| vs step.
    fig, axes = plt.subplots(2, len(objectives), figsize=(4.2 * len(objectives), 6.0), squeeze=False)
    for col, objective in enumerate(objectives):
        for result in chosen:
            r = result["row"]
            if r["objective"] != objective:
                continue
            style = "-" if r["variant"] == "plain" else "--"
            steps = [c["step"] for c in result["curves"]]
            axes[0][col].plot(steps, [c.get("boundary_grad_share") for c in result["curves"]], style,
                              color=colour[r["k"]], linewidth=1, label=f"K={r['k']} {r['variant']}")  # fmt: skip
            axes[1][col].plot(steps, [c.get("boundary_negatives") for c in result["curves"]], style,
                              color=colour[r["k"]], linewidth=1)  # fmt: skip
        axes[0][col].set_title(f"{objective.upper()}: gradient share of boundary negatives", fontsize=9)
        axes[1][col].set_title(f"{objective.upper()}: boundary negatives per prompt |B|", fontsize=9)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.set_xlabel("step")
    axes[0][0].legend(fontsize=6, ncol=2)
    save(fig, "grad_share.png", dpi=70)
    return written


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--protocol", choices=("leak_free", "public"), default="leak_free",
                        help="leak_free: candidate lists rebuilt per prompt (default); public: the files' own lists "
                        "(the papers' protocol, whose negatives leak the target)")  # fmt: skip
    parser.add_argument("--train", help="training prompts (S-DPO format); default: shared LastFM, else bundled sample")
    parser.add_argument("--eval", help="evaluation prompts (any S-DPO-format file)")
    parser.add_argument("--items", help="items.txt catalogue (default: next to --train)")
    parser.add_argument("--output-dir", help="default: benchmarks/results/collapse_<protocol>/")
    parser.add_argument("--cache-dir", default=str(REPO / "outputs" / "collapse_cache"),
                        help="SFT models, reference scores and finished runs (default: outputs/collapse_cache)")  # fmt: skip
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the candidate lists and data subsets")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    parser.add_argument("--extra-seeds", type=int, nargs="+",
                        help="more seeds for DMPO plain and DynamicPO at K in extra_seed_ks (1, 5, 19)")  # fmt: skip
    parser.add_argument("--ks", type=int, nargs="+", help="override the preset's K values")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, help="override the preset's objectives")
    parser.add_argument("--po-steps", type=int)
    parser.add_argument("--po-lr", type=float)
    parser.add_argument("--po-batch", type=int)
    parser.add_argument("--n-po", type=int)
    parser.add_argument("--beta", type=float)
    parser.add_argument("--po-scheduler", help="e.g. constant_with_warmup (default), cosine, linear")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations on the subset")
    parser.add_argument("--n-eval-final", type=int, help="final evaluation prompts (0: the whole file)")
    parser.add_argument("--n-gen-final", type=int, help="prompts for the generation protocol (0: all final ones)")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="override the preset's variants")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core box)")
    parser.add_argument("--fresh", action="store_true", help="rerun grid points even when cached")
    parser.add_argument("--fresh-sft", action="store_true", help="retrain the SFT model even when cached")
    parser.add_argument("--no-compact-head", action="store_true", help="keep TRL's all-position fused head on CPU")
    parser.add_argument("--compare", nargs="+", metavar="DIR",
                        help="train nothing: put finished result folders side by side (protocols.md, protocols.png "
                             "in --output-dir, default benchmarks/results/)")  # fmt: skip
    return parser.parse_args(argv)


def resolve_preset(args) -> Preset:
    preset = dataclasses.replace(PRESETS[args.preset])
    overrides = {
        "seeds": tuple(args.seeds) if args.seeds else None,
        "ks": tuple(args.ks) if args.ks else None,
        "objectives": tuple(args.objectives) if args.objectives else None,
        "po_steps": args.po_steps,
        "po_lr": args.po_lr,
        "po_batch": args.po_batch,
        "n_po": args.n_po,
        "beta": args.beta,
        "po_scheduler": args.po_scheduler,
        "eval_every": args.eval_every,
        "variants": tuple(args.variants) if args.variants else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.n_eval_final is not None:
        overrides["n_eval_final"] = args.n_eval_final or None
    if args.n_gen_final is not None:
        overrides["n_gen_final"] = args.n_gen_final or None
    if args.ks:
        overrides["ablation_ks"] = tuple(k for k in preset.ablation_ks if k in args.ks)
    if args.extra_seeds:
        overrides["extra_seeds"] = tuple(args.extra_seeds)
    elif args.seeds:
        overrides["extra_seeds"] = ()
    return dataclasses.replace(preset, **overrides)


def read_runs(folder: Path) -> tuple[str, list[dict[str, Any]]]:
    """The protocol and rows of a finished result folder's runs.csv, numbers parsed."""
    protocol = json.loads((folder / "meta.json").read_text())["protocol"]
    rows = []
    with open(folder / "runs.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key in ("k", "seed", "steps") and value != "":
                    row[key] = int(value)
                elif key not in ("kind", "protocol", "objective", "variant") and value not in ("", "True", "False"):
                    row[key] = float(value)
            rows.append(row)
    return protocol, rows


def compare_protocols(folders: list[Path], out: Path) -> int:
    """Side-by-side table (protocols.md) and plot (protocols.png) of ranking HR@1 vs K for several result folders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_runs(folder) for folder in folders]
    objectives = [o for o in OBJECTIVES if any(r["objective"] == o for _, rows in runs for r in rows)]
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.4 * len(objectives), 3.6), squeeze=False, sharey=True)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    lines = []
    for i, (protocol, rows) in enumerate(runs):
        groups = aggregate(rows, "hr1")
        sft = next((r["hr1"] for r in rows if r["objective"] == "sft"), None)
        header, body = summary_table(rows, "hr1")
        lines += [f"### {protocol} candidates (ranking HR@1; SFT {sft:.3f})", "", markdown_table(header, body), ""]
        for col, objective in enumerate(objectives):
            ax = axes[0][col]
            for variant, linestyle in (("plain", "-"), ("dynamicpo", "--")):
                ks = sorted(k for (o, v, k) in groups if o == objective and v == variant)
                if ks:
                    means = [statistics.fmean(groups[(objective, variant, k)]) for k in ks]
                    ax.plot(ks, means, linestyle, marker="o" if variant == "plain" else "s", markersize=3,
                            color=colours[i % len(colours)], label=f"{protocol} {VARIANT_STYLE[variant]['label']}")  # fmt: skip
            if sft is not None:
                ax.axhline(sft, color=colours[i % len(colours)], linestyle=":", linewidth=1)
            ax.set_title(f"{objective.upper()}: ranking HR@1 vs K (dotted: SFT)", fontsize=9)
            ax.set_xlabel("K (negatives per prompt)")
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("HR@1")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "protocols.png", dpi=80)
    plt.close(fig)
    (out / "protocols.md").write_text("\n".join(lines))
    print("\n".join(lines))
    log(f"wrote {out / 'protocols.md'} and {out / 'protocols.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        out = Path(args.output_dir) if args.output_dir else REPO / "benchmarks" / "results"
        return compare_protocols([Path(folder) for folder in args.compare], out)
    from trl_dynamicpo import compact_lm_head_on_cpu

    with contextlib.ExitStack() as stack:
        if not args.no_compact_head:
            stack.enter_context(compact_lm_head_on_cpu())
        return run_benchmark(args, argv)


def run_benchmark(args: argparse.Namespace, argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, args.threads))
    hf_logging.set_verbosity_error()
    from trl_dynamicpo.recsys import baseline_metrics, leak_check

    t0 = time.time()
    preset = resolve_preset(args)
    out = Path(args.output_dir) if args.output_dir else REPO / "benchmarks" / "results" / f"collapse_{args.protocol}"
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)

    data = load_data(args, preset)
    builder = make_builder()
    log(f"data ({args.protocol}): {len(data.train_all)} training prompts ({len(data.sft)} SFT, {len(data.po)} PO), "
        f"{len(data.eval_all)} evaluation prompts ({len(data.eval_subset)} in the mid-training subset); "
        f"{data.files['eval']['path']}")  # fmt: skip
    baselines = baseline_metrics(data.train_all, data.eval_all)
    baselines = {k: v for k, v in baselines.items() if k in ("random", "popularity", "transition")}
    leak = leak_check(data.train_all, data.eval_all)
    log("baselines HR@1: " + ", ".join(f"{k} {v['hr@1']:.3f}" for k, v in baselines.items())
        + f"; candidate-list lookup {leak['hit_rate']:.3f}")  # fmt: skip

    model, tokenizer, sft_dir, sft_info = train_or_load_sft(data, builder, preset, args, cache)
    stats = token_stats(tokenizer, builder, data.eval_all)
    log(f"tokens: prompt mean {stats['prompt_tokens_mean']:.1f} / max {stats['prompt_tokens_max']}, "
        f"one-token items {stats['completion_one_item_token_share']:.3f}")  # fmt: skip
    gen_n = preset.n_gen_final or len(data.eval_all)
    data.gen = data.eval_all[:gen_n]
    t_eval = time.time()
    sft_final = rank_eval(model, tokenizer, data.eval_all, builder)
    sft_subset = rank_eval(model, tokenizer, data.eval_subset, builder)
    sft_gen = gen_eval(model, tokenizer, data.gen, builder, preset.gen_max_new_tokens)
    log(f"SFT: HR@1 {sft_final['hr@1']:.3f} NDCG@5 {sft_final['ndcg@5']:.3f} (subset HR@1 {sft_subset['hr@1']:.3f}); "
        f"generation HR@1 {sft_gen['hr@1']:.3f} valid {sft_gen['valid_ratio']:.3f} ({time.time() - t_eval:.0f}s)")  # fmt: skip

    po_key = stable_hash({"sft": sft_dir.name, "n_po": len(data.po), "data_seed": args.data_seed})
    ref_scores = reference_scores(model, tokenizer, data.po, builder, sft_dir / f"ref-{po_key}.json")
    eval_key = stable_hash([content_key(data.files["eval"]), len(data.eval_all), len(data.eval_subset), gen_n])
    ctx = {
        "preset": preset, "data": data, "builder": builder, "tokenizer": tokenizer, "sft_dir": sft_dir,
        "ref_scores": ref_scores, "sft_subset": sft_subset, "cache": cache,
    }  # fmt: skip
    run_dir = cache / f"runs-{sft_dir.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    po_settings = {
        k: getattr(preset, k)
        for k in ("n_po", "po_steps", "po_batch", "po_lr", "po_scheduler", "po_warmup_ratio", "beta",
                  "max_grad_norm", "log_every", "eval_every", "gen_max_new_tokens")
    }  # fmt: skip

    grid = build_grid(preset)
    log(f"grid: {len(grid)} runs ({preset.po_steps} steps, batch {preset.po_batch}, lr {preset.po_lr}, beta "
        f"{preset.beta}); cache {run_dir}")  # fmt: skip
    results = []
    for index, point in enumerate(grid, start=1):
        key = stable_hash({"point": dataclasses.asdict(point), "po": po_settings, "eval": eval_key, "v": 1})
        path = run_dir / f"{point.name}-{key}.json"
        if path.exists() and not args.fresh:
            result = json.loads(path.read_text())
            log(f"[{index}/{len(grid)}] {point.name}: cached, HR@1 {result['row']['hr1']:.3f}")
        else:
            result = run_point(point, ctx)
            path.write_text(json.dumps(result))
            r = result["row"]
            log(f"[{index}/{len(grid)}] {point.name}: HR@1 {r['hr1']:.3f} (best subset {r['best_hr1_subset']:.3f} @"
                f"{r['best_step']}), gen HR@1 {r['gen_hr1']:.3f} valid {r['gen_valid_ratio']:.2f}, loss "
                f"{r['loss_first']:.3f}->{r['loss_final']:.3f}, {r['step_time_s']:.2f}s/step, eval {r['eval_time_s']:.0f}s")  # fmt: skip
        results.append(result)

    rows = reference_rows(args.protocol, sft_final, sft_gen, sft_subset, baselines, leak)
    rows += [r["row"] for r in results]
    write_csv(out / "runs.csv", RUN_COLUMNS, rows)
    write_csv(out / "curves.csv", CURVE_COLUMNS, curve_rows(results))
    plots = plot_all(out, rows, results, args.protocol)
    elapsed = time.time() - t0
    header, body = summary_table(rows, "hr1")
    gen_header, gen_body = summary_table(rows, "gen_hr1")
    refs = "\n".join(
        f"- {r['objective']}: HR@1 {r['hr1']:.4f}" + (f", generation HR@1 {r['gen_hr1']:.4f}" if "gen_hr1" in r else "")
        for r in rows
        if r["kind"] == "reference"
    )
    summary = (
        f"# Collapse benchmark, {args.protocol} candidates, preset {args.preset}\n\n"
        f"Ranking HR@1 on {len(data.eval_all)} evaluation prompts:\n\n{markdown_table(header, body)}\n\n"
        f"Generation HR@1 (greedy, {preset.gen_max_new_tokens} new tokens) on {gen_n} prompts:\n\n"
        f"{markdown_table(gen_header, gen_body)}\n\nReference lines:\n\n{refs}\n\n"
        f"Wall time {elapsed / 60:.1f} min.\n"
    )
    (out / "summary.md").write_text(summary)
    meta = {
        "argv": sys.argv[1:] if argv is None else argv,
        "preset": args.preset,
        "settings": dataclasses.asdict(preset),
        "protocol": args.protocol,
        "files": data.files,
        "n": {"sft": len(data.sft), "po": len(data.po), "eval": len(data.eval_all), "eval_subset": len(data.eval_subset),
              "gen": gen_n, "train_file": len(data.train_all)},  # fmt: skip
        "tokens": stats,
        "sft": {k: v for k, v in sft_info.items() if k != "settings"},
        "leak_check": leak,
        "wall_time_s": elapsed,
        "threads": args.threads,
        "compact_fused_head": not args.no_compact_head,
        "plots": [p.name for p in plots],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print()
    print(f"Ranking HR@1 ({args.protocol}, {len(data.eval_all)} prompts):")
    print(text_table(header, body))
    print(f"Generation HR@1 ({gen_n} prompts):")
    print(text_table(gen_header, gen_body))
    print(refs)
    log(f"wrote {out}/runs.csv, curves.csv, summary.md, meta.json and {len(plots)} plots in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
