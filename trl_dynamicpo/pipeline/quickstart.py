"""`run_quickstart` (`trl-dynamicpo quickstart`): the whole recipe offline on a laptop CPU, in a few minutes.

1. Builds a small tokenizer (every LastFM artist is one token) and a small Qwen2-shaped model from the bundled
   LastFM sample, with leak-free candidate lists, and saves them to `<output_dir>/base`.
2. Writes `<output_dir>/recipe.yaml`, an ordinary CLI recipe for that model, and runs its stages in this process
   with the recipe API, exactly as `trl-dynamicpo sft|train|eval --config <output_dir>/recipe.yaml` would: SFT, ranking evaluation
   of the SFT model ("before"), DynamicPO from the SFT model, ranking evaluation again ("after").
3. Prints HR@1 / NDCG@5 before and after (with the non-LLM baselines for scale) and writes `metrics.json` and
   `quickstart.png` (training losses, DynamicPO diagnostics, metrics before/after).

`--tiny` shrinks everything for CI (well under a minute); `--max_steps` caps each training stage.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..sweep.stats import PairedComparison, paired_comparison
from .arguments import QuickstartArguments
from .data import load_rec_data, prompt_builder
from .evaluate import run_eval
from .recipes import resolve_recipe
from .runtime import has_accelerator
from .sft import run_sft
from .train import run_train


# (default, --tiny) sizes
SIZES = {
    "train_samples": (None, 128),
    "eval_samples": (None, 32),
    "hidden_size": (128, 32),
    "num_layers": (2, 1),
    "batch_size": (32, 16),
}


def _size(qargs: QuickstartArguments, name: str):
    value = getattr(qargs, name)
    if value is not None:
        return value
    return SIZES[name][1 if qargs.tiny else 0]


def _report_to(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return "none"
    return "tensorboard"


def build_recipe(qargs: QuickstartArguments, out: Path, data_files: dict[str, str] | None = None) -> dict[str, Any]:
    """The CLI recipe the quickstart runs (also written to `<output_dir>/recipe.yaml`)."""
    tiny = qargs.tiny
    name = f"lastfm-sample-top{qargs.catalogue_size}" if data_files else "lastfm-sample"
    common: dict[str, Any] = {
        "model_name_or_path": str(out / "base"),
        **(data_files or {}),
        "dataset_name": name,
        "candidates": "leak_free",
        "candidate_seed": qargs.seed,
        "template": qargs.template,
        "separator": qargs.separator,
        "history_loss": qargs.history_loss,
        "num_negatives": qargs.num_negatives,
        "max_train_samples": _size(qargs, "train_samples"),
        "max_eval_samples": _size(qargs, "eval_samples"),
        "seed": qargs.seed,
        "bf16": False,
        "gradient_checkpointing": False,
        "per_device_train_batch_size": _size(qargs, "batch_size"),
        "per_device_eval_batch_size": _size(qargs, "batch_size"),
        "report_to": _report_to(qargs.report_to),
        "logging_steps": 1 if tiny else 5,
        "save_strategy": "no",
        "eval_strategy": "no",
        "dataloader_num_workers": 0,
        "disable_tqdm": not qargs.show_progress,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
    }
    sft: dict[str, Any] = {
        "output_dir": str(out / "sft"),
        "num_train_epochs": qargs.sft_epochs,
        "learning_rate": qargs.sft_learning_rate,
        "max_length": 512,
    }
    train: dict[str, Any] = {
        "model_name_or_path": str(out / "sft"),
        "output_dir": str(out / "dynamicpo"),
        "num_train_epochs": qargs.dpo_epochs,
        "learning_rate": qargs.dpo_learning_rate,
        "beta": qargs.beta,
        "multi_negative_loss": qargs.multi_negative_loss,
        "boundary_selection": True,
        "dynamic_beta": True,
        "max_length": 512,
    }
    if qargs.max_steps is not None:
        sft["max_steps"] = train["max_steps"] = qargs.max_steps
    elif tiny:
        sft["max_steps"], train["max_steps"] = 6, 3
    evaluation = {
        "model_name_or_path": str(out / "dynamicpo"),
        "output_dir": str(out / "eval_dynamicpo"),
        "protocol": "ranking",
        "batch_size": _size(qargs, "batch_size"),
        "show_progress": qargs.show_progress,
    }
    return {**{k: v for k, v in common.items() if v is not None}, "sft": sft, "train": train, "eval": evaluation}


def _write_yaml(recipe: dict[str, Any], path: Path, command_hint: str) -> None:
    import yaml

    header = (
        "# Written by `trl-dynamicpo quickstart`. Rerun a stage with:\n"
        f"#   {command_hint}\n"
    )
    path.write_text(header + yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


def _log_history(output_dir: Path) -> list[dict]:
    state = output_dir / "trainer_state.json"
    if not state.exists():
        return []
    return json.loads(state.read_text(encoding="utf-8")).get("log_history", [])


# The models and baselines of the HR@1 panel, in order: (label, where to find its ranking metrics, colour).
_HR_BARS = (
    ("random", ("baselines", "random"), "0.8"),
    ("popularity", ("baselines", "popularity"), "0.65"),
    ("transitions", ("baselines", "transition"), "0.5"),
    ("co-occurrence", ("baselines", "cooccurrence"), "0.35"),
    ("SFT", ("before", "ranking"), "tab:blue"),
    ("DynamicPO", ("after", "ranking"), "tab:orange"),
)


def plot(results: dict[str, Any], out: Path) -> Path | None:
    """`quickstart.png`: the SFT and DynamicPO losses, DynamicPO's diagnostics, and ranking HR@1 / NDCG@5 of the SFT
    and DynamicPO models beside the counting baselines, on the same validation prompts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sft_log = [r for r in _log_history(out / "sft") if "loss" in r]
    dpo_log = [r for r in _log_history(out / "dynamicpo") if "loss" in r]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, log, title in (
        (axes[0, 0], sft_log, "SFT loss (history items + answer, cross-entropy)"),
        (axes[0, 1], dpo_log, "DynamicPO loss (per logged batch of prompts)"),
    ):
        if log:
            ax.plot([r["step"] for r in log], [r["loss"] for r in log], marker="." if len(log) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax = axes[1, 0]
    for key, label in (
        ("rewards/accuracies", "reward accuracy (answer above every negative)"),
        ("dynamicpo/boundary_negatives", "boundary negatives |B| per prompt"),
        ("dynamicpo/beta_mean", "mean beta_j"),
    ):
        points = [(r["step"], r[key]) for r in dpo_log if key in r]
        if points:
            ax.plot(*zip(*points), label=label, marker="." if len(points) < 30 else None)
    ax.set_xlabel("DynamicPO step")
    ax.set_title("DynamicPO diagnostics", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax = axes[1, 1]
    bars = []
    for label, (section, name), colour in _HR_BARS:
        metrics = (results.get(section) or {}).get(name)
        if metrics:
            bars.append((label, metrics, colour))
    xs = range(len(bars))
    for offset, metric, hatch in ((-0.2, "hr@1", None), (0.2, "ndcg@5", "//")):
        values = [m[metric] for _, m, _ in bars]
        drawn = ax.bar([x + offset for x in xs], values, 0.38, color=[c for _, _, c in bars], hatch=hatch,
                       edgecolor="white", label=metric.upper())  # fmt: skip
        ax.bar_label(drawn, fmt="%.2f", fontsize=7)
    ax.set_xticks(list(xs), [label for label, _, _ in bars], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(f"Ranking the 20 candidates of {results['eval_prompts']} validation prompts (leak-free)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = out / "quickstart.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_quickstart(qargs: QuickstartArguments) -> dict[str, Any]:
    """Run the quickstart; returns the results written to `metrics.json`."""
    import datasets
    from accelerate import PartialState


    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    datasets.disable_progress_bars()  # keep the training and evaluation bars, not one per preprocessing pass
    if not qargs.show_progress:
        os.environ["TQDM_DISABLE"] = "1"
    out = Path(qargs.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        timings[name] = round(now - last, 2)
        last = now
        if PartialState().is_main_process:
            print(f"[quickstart] {name}: {timings[name]:.1f}s", flush=True)

    # Under torchrun / accelerate launch every process runs the stages; only the main one writes the shared files.
    state = PartialState(cpu=not has_accelerator())
    recipe_path = out / "recipe.yaml"
    if state.is_main_process:
        from trl_dynamicpo.recsys import write_sample_slice

        data_files = write_sample_slice(out / "data", qargs.catalogue_size) if qargs.catalogue_size > 0 else None
        _write_yaml(build_recipe(qargs, out, data_files), recipe_path, f"trl-dynamicpo sft|train|eval --config {recipe_path}")
    state.wait_for_everyone()

    # 1. Tokenizer and model from the training prompts (leak-free candidates, as the stages will see them).
    if state.is_main_process:
        print(f"[quickstart] building a tokenizer and a small model in {out / 'base'}", flush=True)
    data_args = resolve_recipe(recipe_path, "sft")[0]
    data = load_rec_data(data_args, need=("train",))
    hidden, layers = _size(qargs, "hidden_size"), _size(qargs, "num_layers")
    if state.is_main_process:
        from trl_dynamicpo.recsys import sample_catalogue
        from trl_dynamicpo.tiny import build_recommender_lm

        # Every artist of the sample is one token (history names outside the slice included); with the compact
        # CPU head the vocabulary size costs little.
        build_recommender_lm(
            prompt_builder(data_args).training_texts(data.train), sample_catalogue(),
            vocab_size=300 if qargs.tiny else 1000, hidden_size=hidden, num_layers=layers, seed=qargs.seed,
            output_dir=out / "base",
        )  # fmt: skip
    state.wait_for_everyone()
    base_config = json.loads((out / "base" / "config.json").read_text(encoding="utf-8"))
    vocab_size = base_config["vocab_size"]
    lap("build")

    # 2. SFT, evaluation before, DynamicPO, evaluation after: the recipe's stages, in this process.
    run_sft(*resolve_recipe(recipe_path, "sft"))
    lap("sft")
    before = run_eval(*resolve_recipe(recipe_path, "eval", overrides={"model_name_or_path": str(out / "sft"),
                                                                       "output_dir": str(out / "eval_sft")}))
    lap("eval_before")
    run_train(*resolve_recipe(recipe_path, "train"))
    lap("dynamicpo")
    after = run_eval(*resolve_recipe(recipe_path, "eval", overrides={"baselines": False}))
    lap("eval_after")
    timings["total"] = round(time.perf_counter() - start, 2)
    if not state.is_main_process:
        return {}

    from safetensors import safe_open

    with safe_open(str(out / "base" / "model.safetensors"), "pt") as weights:
        n_params = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    results = {
        "model": {"parameters": n_params, "vocab_size": vocab_size, "hidden_size": hidden, "num_layers": layers},
        "train_prompts": len(data.train),
        "eval_prompts": before["n"],
        "catalogue_size": len(data.catalogue),
        "candidates": "leak_free",
        "before": {"model": "sft", "ranking": before["ranking"]},
        "after": {"model": "dynamicpo", "ranking": after["ranking"]},
        "baselines": before.get("baselines"),
        "leak_check": before.get("leak_check"),
        "timings_s": timings,
        "recipe": str(recipe_path),
    }
    # HR@1 after minus before on the same prompts: wins/losses and a paired interval, not two means side by side.
    from trl_dynamicpo.recsys import read_hits

    hits = {name: read_hits(out / f"eval_{name}" / "ranking" / "predictions.jsonl") for name in ("sft", "dynamicpo")}
    results["paired_hr@1"] = paired_comparison(hits["dynamicpo"], hits["sft"]).as_dict()
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    figure = plot(results, out) if qargs.plot else None
    print(summary(results, figure))
    return results


def summary(results: dict[str, Any], figure: Path | None) -> str:
    b, a = results["before"]["ranking"], results["after"]["ranking"]
    lines = [
        "",
        f"DynamicPO quickstart: {results['model']['parameters'] / 1e6:.2f}M-parameter model, "
        f"{results['train_prompts']} training prompts, {results['eval_prompts']} validation prompts, "
        f"{results['catalogue_size']} artists, leak-free candidates (20 per prompt)",
        f"{'':22}{'HR@1':>8}{'NDCG@5':>9}{'HR@5':>8}",
        f"{'SFT (before)':22}{b['hr@1']:8.4f}{b['ndcg@5']:9.4f}{b['hr@5']:8.4f}",
        f"{'DynamicPO (after)':22}{a['hr@1']:8.4f}{a['ndcg@5']:9.4f}{a['hr@5']:8.4f}",
    ]
    paired = results.get("paired_hr@1")
    if paired:
        lines.append(
            f"DynamicPO - SFT, HR@1 on the same prompts: {PairedComparison(**paired).describe()}, 95% bootstrap interval"
        )
    for name in ("random", "popularity", "transition", "cooccurrence"):
        m = (results.get("baselines") or {}).get(name)
        if m:
            lines.append(f"{name + ' baseline':22}{m['hr@1']:8.4f}{m['ndcg@5']:9.4f}{m['hr@5']:8.4f}")
    lines.append(f"time: {results['timings_s']['total']:.0f}s  ({', '.join(f'{k} {v:.0f}s' for k, v in results['timings_s'].items() if k != 'total')})")
    out = Path(results["recipe"]).parent
    lines.append(f"wrote {out / 'metrics.json'}" + (f" and {figure}" if figure else ""))
    return "\n".join(lines)

