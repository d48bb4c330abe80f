"""Collapse benchmark: presets of `trl-dynamicpo sweep` for a small recommender LM on LastFM.

    python benchmarks/collapse.py --preset smoke            # the bundled sample, about a minute (the tests run it)
    python benchmarks/collapse.py --preset quick --data DIR # about 10 minutes from an empty cache
    python benchmarks/collapse.py --preset full --data DIR  # the grid of benchmarks/collapse_README.md

`DIR` holds the full LastFM split in the bundled sample's layout (`train.jsonl.gz`, `val.jsonl.gz` or
`valid.jsonl.gz`, `items.txt`: what `trl-dynamicpo data build lastfm` writes);
without `--data`, `$TRL_DYNAMICPO_DATA` names it, and without either the bundled sample is used with a notice in
the output and in `meta.json` (the sample is far too small for the quick and full presets' numbers).

What a preset does, all through the package's public API:

1. Writes the data files once: the training prompts without the last `holdout_users` users (their prompts become
   an unseen evaluation file, `heldout`, evaluated beside the validation file), with leak-free candidate lists
   (`leak_free_candidates`: negatives drawn per prompt from the catalogue, never seeded by the target) or the papers'
   lists (`--candidates papers`).
2. Builds the offline recommender LM (`trl_dynamicpo.tiny.build_recommender_lm`: every artist one token, a small
   Llama-shaped model with tied embeddings) and writes a CLI recipe for it: SFT with the loss on the history items
   (`history_loss`), preference training from the SFT model on the same prompts, evaluation of every model on the
   whole validation file with the ranking and the papers' generation protocols.
3. Runs `trl-dynamicpo sweep` on that recipe with the preset's grid (K x objective x variant x seeds), which trains
   the SFT model once, caches every run and writes `runs.csv`, `curves.csv`, `summary.md` (paired statistics) and
   plots; the report files and `meta.json` are copied to `--results-dir`.

Everything below `--cache-dir` (git-ignored `outputs/` by default) is reused by later calls with the same preset and
data; `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "History: {history}.\nCandidates: {candidates}."


@dataclasses.dataclass
class Preset:
    """A sweep at one scale. Model and data settings go into the recipe, the grid into `trl-dynamicpo sweep`."""

    # model (build_recommender_lm): every item one token ("whole") or sub-word pieces shared between names
    hidden_size: int = 128
    num_layers: int = 2
    tokenizer_vocab: int = 400
    item_tokens: str = "whole"
    separator: str = ","  # with sub-word names ", ": a name in the prompt is spelled as in the answer
    # SFT on every training prompt, one sweep per loss: "history" (history items + answer) and/or "answer" (the
    # answer only, as the papers train)
    sft_losses: tuple[str, ...] = ("history",)
    sft_epochs: float = 1.1
    sft_max_steps: int = -1
    sft_batch: int = 32
    sft_lr: float = 3e-3
    # preference optimisation from the SFT model, on a seeded subset of the same prompts: `po_epochs` over them
    # when set, else `po_steps` steps
    po_prompts: int | None = 2048
    po_steps: int = 128
    po_epochs: float | None = None
    po_batch: int = 16
    po_lr: float = 3e-4
    po_scheduler: str = "constant_with_warmup"
    beta: float = 1.0
    # evaluation: the whole validation file unless `eval_prompts`; curves on `curve_prompts` every `curve_every`
    eval_prompts: int | None = None
    max_new_tokens: int = 20
    curve_prompts: int = 200
    curve_every: int = 16
    # grid
    ks: tuple[int, ...] = (1, 3, 5, 10, 15, 19)
    objectives: tuple[str, ...] = ("dmpo", "sdpo", "mppo")
    variants: tuple[str, ...] = ("plain", "dynamicpo")
    seeds: tuple[int, ...] = (0,)
    ablation_ks: tuple[int, ...] = ()
    extra_seeds: tuple[int, ...] = ()
    extra_seed_ks: tuple[int, ...] = ()
    holdout_users: int = 50  # the last users of the training file become an unseen evaluation file
    sample_ok: bool = False  # the bundled sample is the intended data (smoke)


PRESETS: dict[str, Preset] = {
    # End-to-end check on the bundled sample: a minute model, a few steps, 2 K x 2 variants.
    "smoke": Preset(
        hidden_size=32, num_layers=1, tokenizer_vocab=300, sft_max_steps=8, sft_batch=16, po_prompts=32, po_steps=2,
        po_batch=8, eval_prompts=24, max_new_tokens=4, curve_prompts=8, curve_every=1, ks=(1, 3),
        objectives=("dmpo",), holdout_users=0, sample_ok=True,
    ),
    # About 10 minutes from an empty cache on 2 cores: a shorter SFT, DMPO plain vs DynamicPO at K = 1 and 19,
    # 1,000 validation prompts.
    "quick": Preset(sft_epochs=0.35, po_steps=64, eval_prompts=1000, ks=(1, 19), objectives=("dmpo",)),
    # The grid: 3 objectives x 2 variants x 6 K and the DMPO ablations at K = 15, 19 (40 runs, one seed; the seeds
    # are spent where the comparisons need them: `--name collapse`); the whole validation file and the held-out
    # users, both protocols.
    "full": Preset(ablation_ks=(15, 19)),
    # Sub-word item names (a BPE of 3,000 tokens over the template words and the catalogue: 4.6 tokens per artist,
    # every name sharing a token with another), so that pushing negatives down can push the answer's shared tokens
    # down too. The papers' regime: preference training for 3 epochs over its prompts, K up to 19, DMPO and S-DPO.
    "subword-smoke": Preset(
        hidden_size=32, num_layers=1, tokenizer_vocab=300, item_tokens="subword", separator=", ",
        sft_losses=("answer",), sft_max_steps=8, sft_batch=16, po_prompts=32, po_epochs=1.0, po_batch=8,
        eval_prompts=24, max_new_tokens=8, curve_prompts=8, curve_every=1, ks=(1, 3), objectives=("dmpo",),
        holdout_users=0, sample_ok=True,
    ),
    # At most 15 minutes from an empty cache on 2 cores: SFT with the history loss (an answer-only SFT from scratch
    # barely reads the candidates at this scale), DMPO plain vs DynamicPO at K = 1 and 19, 500 prompts per file.
    "subword-quick": Preset(
        tokenizer_vocab=3000, item_tokens="subword", separator=", ", sft_losses=("history",), sft_epochs=0.5,
        po_prompts=512, po_epochs=3.0, eval_prompts=500, ks=(1, 19), objectives=("dmpo",),
    ),
    # Both SFT losses (one sweep each), K in {1, 3, 7, 15, 19} x {DMPO, S-DPO} x {plain, DynamicPO}, seeds 0-2 for
    # DMPO at K = 1 and 19, 3 epochs over 1,024 preference prompts, both files, both protocols.
    "subword-full": Preset(
        tokenizer_vocab=3000, item_tokens="subword", separator=", ", sft_losses=("answer", "history"),
        sft_epochs=1.5, po_prompts=1024, po_epochs=3.0, ks=(1, 3, 7, 15, 19), objectives=("dmpo", "sdpo"),
        extra_seeds=(1, 2), extra_seed_ks=(1, 19),
    ),
}  # fmt: skip
SFT_LOSSES = {"history": "history items and answer", "answer": "the answer only"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------------------ data
def user_sequences(examples) -> list[list[int]]:
    """Row indices of each user, for files built like the LastFM split: a user's prompts are consecutive rows whose
    history is the previous row's history (shifted once it holds 10 items) followed by the previous row's answer."""
    users: list[list[int]] = []
    for i, ex in enumerate(examples):
        prev = examples[i - 1] if i else None
        continues = prev is not None and ex.history[-1] == prev.target and ex.history[:-1] in (
            prev.history, prev.history[1:]
        )
        if continues:
            users[-1].append(i)
        else:
            users.append([i])
    return users


def prepare_data(
    data_dir: Path | None, candidates: str, holdout_users: int, cache: Path
) -> tuple[dict[str, str], str | None, dict[str, Any]]:
    """Write the preset's data files once: the training prompts without the last `holdout_users` users, those
    users' prompts as an unseen evaluation file, and the validation file, with leak-free candidate lists (or the
    files' own lists for `papers`). Returns the recipe's file keys, the held-out file (or None) and a description."""
    from trl_dynamicpo.recsys import leak_free_candidates, read_catalogue, read_examples, sample_path, write_examples
    from trl_dynamicpo.recsys.sample import validation_file

    if data_dir is None:
        sources = {"train": sample_path("train"), "eval": sample_path("val"), "items": sample_path("items")}
    else:
        sources = {"train": data_dir / "train.jsonl.gz", "eval": validation_file(data_dir), "items": data_dir / "items.txt"}
    info = {
        "source": "bundled sample" if data_dir is None else "data folder",
        "files": {k: {"name": v.name, "sha1": sha1(v)} for k, v in sources.items()},
        "candidates": candidates,
        "holdout_users": holdout_users,
    }
    key = hashlib.sha1(json.dumps(info, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / f"data-{key}"
    files = {name: folder / f"{name}.jsonl.gz" for name in ("train", "val", "heldout")}
    counts_file = folder / "counts.json"
    if not counts_file.exists():
        log(f"Writing the data files ({candidates} candidates) into {folder}")
        catalogue = read_catalogue(sources["items"])
        train = read_examples(sources["train"], catalogue=catalogue)
        splits = {"val": read_examples(sources["eval"], catalogue=catalogue)}
        users = user_sequences(train)
        held = {i for user in users[len(users) - holdout_users :] for i in user} if holdout_users else set()
        splits["train"] = [ex for i, ex in enumerate(train) if i not in held]
        splits["heldout"] = [ex for i, ex in enumerate(train) if i in held]
        for name, examples in splits.items():
            if candidates == "leak_free":
                examples = leak_free_candidates(examples, catalogue, seed=0)
            write_examples(examples, files[name])
        counts = {name: len(examples) for name, examples in splits.items()}
        counts_file.write_text(json.dumps({**counts, "users": len(users)}) + "\n")
    info["prompts"] = json.loads(counts_file.read_text())
    recipe_files = {"train_file": str(files["train"]), "eval_file": str(files["val"]), "items_file": str(sources["items"])}
    return recipe_files, (str(files["heldout"]) if holdout_users else None), info


# ----------------------------------------------------------------------------------------------- model and recipe
def build_base(files: dict[str, str], preset: Preset, folder: Path) -> dict[str, Any]:
    """The untrained recommender LM (items as whole tokens or sub-word pieces), saved to `folder`; returns its
    description."""
    from trl_dynamicpo.recsys import PromptBuilder, read_catalogue, read_examples
    from trl_dynamicpo.tiny import build_recommender_lm

    info_file = folder / "base_info.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    catalogue = read_catalogue(files["items_file"])
    train = read_examples(files["train_file"], catalogue=catalogue)
    evaluation = read_examples(files["eval_file"], catalogue=catalogue)
    from trl_dynamicpo.tiny import item_token_stats

    builder = PromptBuilder(template=TEMPLATE, separator=preset.separator)
    if preset.item_tokens == "subword":  # the BPE learns the template words and every name once
        texts = [TEMPLATE.format(history="", candidates="")]
    else:
        texts = [builder.build(ex, i) + builder.completion(ex.target) for i, ex in enumerate(train[:2000])]
    # Names outside the catalogue (the validation file's spelling quirks) are items too.
    names = sorted(set(catalogue) | {n for ex in (*train, *evaluation) for n in (*ex.history, *ex.candidates)})
    model, tokenizer = build_recommender_lm(
        texts, names, item_tokens=preset.item_tokens, vocab_size=preset.tokenizer_vocab,
        hidden_size=preset.hidden_size, num_layers=preset.num_layers, max_position_embeddings=1024, seed=0,
        output_dir=folder,
    )  # fmt: skip
    info = {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer),
            "hidden_size": preset.hidden_size, "num_layers": preset.num_layers, "item_tokens": preset.item_tokens,
            "item_spelling": item_token_stats(tokenizer, names).as_dict()}  # fmt: skip
    info_file.write_text(json.dumps(info) + "\n")
    return info


def recipe(files: dict[str, str], preset: Preset, root: Path, sft_loss: str = "history") -> dict[str, Any]:
    """The CLI recipe of the preset: shared data keys, then the sft, train and eval sections."""
    po_length = ({"num_train_epochs": preset.po_epochs, "max_steps": -1} if preset.po_epochs is not None
                 else {"max_steps": preset.po_steps})  # fmt: skip
    return {
        **files,
        "dataset_name": "lastfm",
        "candidates": "file",  # the files are written leak-free (or deliberately keep the papers' lists)
        "template": TEMPLATE,
        "separator": preset.separator,
        "history_loss": sft_loss == "history",
        "max_eval_samples": preset.eval_prompts,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "weight_decay": 0.0,
        "sft": {
            "model_name_or_path": str(root / "base"),
            "output_dir": str(root / f"sft-{sft_loss}"),
            "num_train_epochs": preset.sft_epochs,
            "max_steps": preset.sft_max_steps,
            "per_device_train_batch_size": preset.sft_batch,
            "learning_rate": preset.sft_lr,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 0.05,
            "max_length": 512,
            "logging_steps": 50,
            "seed": 0,
        },
        "train": {
            "model_name_or_path": str(root / f"sft-{sft_loss}"),
            "max_train_samples": preset.po_prompts,
            **po_length,
            "per_device_train_batch_size": preset.po_batch,
            "learning_rate": preset.po_lr,
            "lr_scheduler_type": preset.po_scheduler,
            "warmup_steps": 0.05,
            "beta": preset.beta,
            "max_grad_norm": 1.0,
            "logging_steps": max(1, po_steps(preset) // 16),
            "rank_eval_samples": preset.curve_prompts,
            "rank_eval_steps": preset.curve_every,
            "per_device_eval_batch_size": 64,
        },
        "eval": {"protocol": "both", "batch_size": 64, "max_new_tokens": preset.max_new_tokens, "show_progress": False},
    }


def po_steps(preset: Preset) -> int:
    """Optimiser steps of one preference run."""
    if preset.po_epochs is None:
        return preset.po_steps
    return max(1, math.ceil(preset.po_epochs * (preset.po_prompts or 0) / preset.po_batch))


def sweep_arguments(preset: Preset, sweep_dir: Path, args, heldout: str | None = None):
    from trl_dynamicpo.sweep import SweepArguments

    def pick(name):
        value = getattr(args, name)
        return list(value) if value is not None else list(getattr(preset, name))

    overridden = any(getattr(args, name) is not None for name in ("ks", "objectives", "variants", "seeds"))

    return SweepArguments(
        sweep_dir=str(sweep_dir),
        ks=pick("ks"),
        objectives=pick("objectives"),
        variants=pick("variants"),
        seeds=pick("seeds"),
        # A grid given on the command line is the whole grid: the preset's ablations and extra seeds are dropped.
        ablation_ks=[] if overridden else list(preset.ablation_ks),
        extra_seeds=[] if overridden else list(preset.extra_seeds),
        extra_seed_ks=[] if overridden else list(preset.extra_seed_ks),
        eval_files=[*([heldout] if heldout and not args.no_heldout_eval else []), *args.eval_file],
        train_overrides=args.train_overrides,
        keep_models=False,
        title=f"Collapse benchmark, preset {args.preset} ({args.candidates} candidates)",
    )


# ------------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--data", default=None, help="Folder with train.jsonl.gz, val.jsonl.gz and items.txt "
                        "(default: $TRL_DYNAMICPO_DATA, else the bundled sample with a notice).")  # fmt: skip
    parser.add_argument("--candidates", choices=["leak_free", "papers"], default="leak_free",
                        help="Leak-free candidate lists (default) or the papers' leaky ones.")  # fmt: skip
    parser.add_argument("--eval-file", action="append", default=[], help="Extra evaluation file (repeatable).")
    parser.add_argument("--no-heldout-eval", action="store_true",
                        help="Evaluate on the validation file only, not on the held-out users (half the evaluation).")  # fmt: skip
    parser.add_argument("--cache-dir", default=str(REPO / "outputs" / "collapse"), help="Models and runs.")
    parser.add_argument("--results-dir", default=None,
                        help="Where the report is copied (default: benchmarks/results/collapse_<preset>).")  # fmt: skip
    parser.add_argument("--name", default=None, help="Sweep name (default: the preset); sweeps of one preset share "
                        "its SFT model.")  # fmt: skip
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="Override the preset's K values.")
    parser.add_argument("--objectives", nargs="+", default=None, help="Override the preset's objectives.")
    parser.add_argument("--variants", nargs="+", default=None, help="Override the preset's variants.")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="Override the preset's seeds.")
    parser.add_argument("--sft-loss", nargs="+", choices=sorted(SFT_LOSSES), default=None,
                        help="Override the preset's SFT losses: 'history' (history items + answer) and/or 'answer' "
                        "(the answer only, as the papers); one sweep each.")  # fmt: skip
    parser.add_argument("--train-overrides", nargs="*", default=[],
                        help="Recipe keys set for every `train` run, KEY=VALUE each (learning_rate=1e-3).")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--fresh", action="store_true", help="Delete the preset's SFT model and this sweep's runs.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    from trl_dynamicpo.recsys import DATA_ENV, find_data_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    data_dir = find_data_dir(args.data)
    notes = []
    if data_dir is None:
        notice = (f"NOTICE: no data folder (--data or ${DATA_ENV}): using the bundled 3,000-prompt LastFM sample, "
                  "so the numbers describe the sample, not LastFM.")  # fmt: skip
        if not preset.sample_ok:
            print("\n" + "!" * 100 + f"\n{notice}\n" + "!" * 100 + "\n", file=sys.stderr, flush=True)
        notes.append(notice)
    cache = Path(args.cache_dir)
    start = time.time()
    files, heldout, data_info = prepare_data(data_dir, args.candidates, preset.holdout_users, cache)
    # The base model depends on the preset and the data only, the SFT model also on its loss; each sweep name has
    # its own runs.
    root = cache / f"{args.preset}-{Path(files['train_file']).parent.name}"
    root.mkdir(parents=True, exist_ok=True)
    base = build_base(files, preset, root / "base")
    sft_losses = args.sft_loss or list(preset.sft_losses)
    for sft_loss in sft_losses:
        name = args.name or args.preset
        if len(preset.sft_losses) > 1 or args.sft_loss:  # one sweep (and one report) per SFT loss
            name = f"{name}-{sft_loss}"
        run_one(args, preset, files, heldout, data_info, root, base, sft_loss, name, list(notes), start)
    log(f"Done in {(time.time() - start) / 60:.1f} min")
    return 0


def run_one(args, preset, files, heldout, data_info, root, base, sft_loss, name, notes, start) -> None:
    """The sweep of one SFT loss: its recipe, `trl-dynamicpo sweep`, and the report copied to the results folder."""
    import torch
    import yaml

    from trl_dynamicpo.sweep import run_sweep

    sft_dir = root / f"sft-{sft_loss}"
    sweep_dir = root / "sweeps" / name
    if args.fresh:
        for folder in (sft_dir, sweep_dir):
            shutil.rmtree(folder, ignore_errors=True)
    recipe_path = sweep_dir / "recipe.yaml"  # per sweep: sweeps of one preset may run at the same time
    sweep_dir.mkdir(parents=True, exist_ok=True)
    recipe_path.write_text(yaml.safe_dump(recipe(files, preset, root, sft_loss), sort_keys=False), encoding="utf-8")
    log(f"Preset {args.preset}, SFT on {SFT_LOSSES[sft_loss]}: {base['parameters'] / 1e6:.2f}M-parameter model, "
        f"recipe {recipe_path}")  # fmt: skip
    sweep_args = sweep_arguments(preset, sweep_dir, args, heldout)
    spelling = "every artist one token"
    if base.get("item_tokens") == "subword":
        stats = base["item_spelling"]
        spelling = (f"sub-word artist names: {stats['mean_tokens']:.2f} tokens per name, "
                    f"{100 * stats['share_sharing_token']:.0f}% share a token with another name, "
                    f"{100 * stats['share_sharing_first_token']:.0f}% their first token")  # fmt: skip
    length = f"{preset.po_epochs:g} epochs ({po_steps(preset)} steps)" if preset.po_epochs else f"{preset.po_steps} steps"
    notes += [
        f"Model: {base['parameters'] / 1e6:.2f}M-parameter Llama-shaped model (hidden {base['hidden_size']}, "
        f"{base['num_layers']} layers, vocabulary {base['vocab']}, {spelling}).",
        f"SFT: loss on {SFT_LOSSES[sft_loss]}, {preset.sft_epochs} epochs over all training prompts; preference "
        f"runs: {length} x {preset.po_batch} prompts from the SFT model, lr {preset.po_lr} "
        f"({preset.po_scheduler}), beta {preset.beta}, on {preset.po_prompts or 'all'} of the SFT prompts.",
    ]
    if args.train_overrides:
        notes.append(f"Every run adds: `{' '.join(args.train_overrides)}`.")
    out = run_sweep(sweep_args, str(recipe_path), notes)
    sft_info = sft_dir / "sweep_sft.json"
    meta = {
        "preset": args.preset,
        "sft_loss": sft_loss,
        "settings": dataclasses.asdict(preset),
        # file names, not paths: the report is committed and read on other machines
        "grid": {k: ([Path(f).name for f in v] if k == "eval_files" else v)
                 for k, v in dataclasses.asdict(sweep_args).items() if k != "sweep_dir"},  # fmt: skip
        "data": data_info,
        "notice": notes[0] if data_info["source"] == "bundled sample" else None,
        "model": base,
        "sft_train_time_s": json.loads(sft_info.read_text())["train_time_s"] if sft_info.exists() else None,
        "wall_time_s": time.time() - start,  # whole process so far: data, base model, and every sweep before
        "threads": torch.get_num_threads(),
    }
    results_dir = Path(args.results_dir or REPO / "benchmarks" / "results" / f"collapse_{name}")
    if args.results_dir and len(preset.sft_losses) > 1:  # one folder per SFT loss
        results_dir = results_dir / name
    results_dir.mkdir(parents=True, exist_ok=True)
    for path in out["files"].values():
        shutil.copy2(path, results_dir / Path(path).name)
    (results_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    log(f"Sweep {name} done at {(time.time() - start) / 60:.1f} min; report in {results_dir}")


if __name__ == "__main__":
    raise SystemExit(main())
