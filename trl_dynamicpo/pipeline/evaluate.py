"""`run_eval`: candidate ranking and/or the papers' generation protocol, on one or many processes (`trl-dynamicpo eval`).

Under `accelerate launch` / `torchrun` the evaluation functions of `trl_dynamicpo.recsys` split the prompts between
the processes themselves and give every process the single-process result; this module only reads the data, loads
the model and writes `metrics.json`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .arguments import EvalArguments, RecDataArguments
from .data import load_rec_data, prompt_builder
from .modeling import load_for_eval, require_model_path
from .records import write_run_record
from .runtime import has_accelerator, setup_logging


logger = logging.getLogger(__name__)

REFERENCE_KEYS = ("baselines", "leak_check")


def evaluate_examples(
    model,
    tokenizer,
    examples: list,
    builder,
    *,
    protocol: str = "ranking",
    batch_size: int = 8,
    max_new_tokens: int = 20,
    output_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    train_examples: list | None = None,
) -> dict[str, Any]:
    """Evaluate `examples` with the ranking and/or generation protocol; same result on every process.

    Returns `{"ranking": {...}, "generation": {...}, "baselines": {...}, "leak_check": {...}, "n": N}` (the
    protocols asked for; baselines and leak check, computed once, when `train_examples` is given). With
    `output_dir`, each protocol writes `<output_dir>/<protocol>/{metrics.json,predictions.jsonl}`.
    """
    from trl_dynamicpo.recsys import evaluate_generation, evaluate_ranking

    results: dict[str, Any] = {"n": len(examples)}
    reference = train_examples  # the baselines and the leak check come with the first protocol only
    for name in ["ranking", "generation"] if protocol == "both" else [protocol]:
        kwargs = {
            "batch_size": batch_size,
            "output_dir": None if output_dir is None else Path(output_dir) / name,
            "show_progress": show_progress,
            "train_examples": reference,
        }
        if name == "ranking":
            metrics = evaluate_ranking(model, tokenizer, examples, builder, **kwargs)
        else:
            metrics = evaluate_generation(model, tokenizer, examples, builder, max_new_tokens=max_new_tokens, **kwargs)
        results.update({key: metrics.pop(key) for key in REFERENCE_KEYS if key in metrics})
        results[name] = metrics
        reference = None
    return results


def format_summary(results: dict[str, Any], title: str = "") -> str:
    """A short text table of the main numbers."""
    lines = [title] if title else []
    ranking, generation = results.get("ranking"), results.get("generation")
    if ranking:
        lines.append(
            "ranking     HR@1 {hr@1:.4f}  HR@5 {hr@5:.4f}  NDCG@5 {ndcg@5:.4f}  MRR {mrr:.4f}  (n={n})".format(**ranking)
        )
    if generation:
        lines.append("generation  HR@1 {hr@1:.4f}  ValidRatio {valid_ratio:.4f}  (n={n})".format(**generation))
    for name, metrics in (results.get("baselines") or {}).items():
        lines.append(f"  baseline {name:<16} HR@1 {metrics['hr@1']:.4f}  NDCG@5 {metrics['ndcg@5']:.4f}")
    if results.get("leak_check"):
        lines.append(f"  candidate-list lookup (leak check) HR@1 {results['leak_check']['hit_rate']:.4f}")
    return "\n".join(lines)


def run_eval(data_args: RecDataArguments, eval_args: EvalArguments, model_args) -> dict[str, Any]:
    """Evaluate `model_args.model_name_or_path` (model or adapter folder) and write `metrics.json`.

    The arguments are `resolve_recipe(recipe, "eval")` (`RecDataArguments`, `EvalArguments`, `trl.ModelConfig`).
    Returns the metrics (the same on every process); see `evaluate_examples` for their layout.
    """
    from accelerate import PartialState
    from transformers import set_seed


    # Without an accelerator, CPU processes only form a group (gloo) when asked to: one prompt shard each.
    PartialState(cpu=not has_accelerator())
    setup_logging()
    set_seed(eval_args.seed)
    path = require_model_path(model_args, "eval")
    need = ("train", "eval", "test") if eval_args.baselines else ("eval", "test")
    data = load_rec_data(data_args, need=need)
    split = eval_args.split
    if split == "auto":
        split = "test" if data.test else "eval"
    examples = data.test if split == "test" else data.eval
    if not examples:
        raise ValueError(f"No {split} prompts to evaluate: set {'test_file' if split == 'test' else 'eval_file'}.")
    output_dir = eval_args.output_dir or (os.path.join(path, "eval") if os.path.isdir(path) else "eval")
    model, tokenizer = load_for_eval(model_args, eval_args.merge_adapter, eval_args.trust_remote_code)
    results = evaluate_examples(
        model,
        tokenizer,
        examples,
        prompt_builder(data_args),
        protocol=eval_args.protocol,
        batch_size=eval_args.batch_size,
        max_new_tokens=eval_args.max_new_tokens,
        output_dir=output_dir,
        show_progress=eval_args.show_progress,
        train_examples=data.train if eval_args.baselines else None,
    )
    results = {"model": path, "split": split, "candidates": data_args.candidates, "dataset": data.name, **results}
    state = PartialState()
    if state.is_main_process:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "metrics.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        write_run_record(output_dir, "eval", data=data_args, eval=eval_args, model=model_args)
        logger.info("Wrote %s", Path(output_dir) / "metrics.json")
    return results

