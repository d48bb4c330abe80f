"""`trl-dynamicpo eval`: candidate ranking and/or the papers' generation protocol, on one or many processes.

Under `accelerate launch` / `torchrun` every process evaluates every N-th prompt (prompt i keeps its paraphrase,
which depends on i) and the main process combines the metrics (weighted by prompt counts, so the result equals a
single-process run) and merges the per-prompt predictions.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .arguments import EvalArguments, RecDataArguments
from .common import logger, setup_logging, write_run_record


MEAN_KEYS_SKIP = ("n",)


def dataclass_types() -> tuple:
    from trl import ModelConfig

    return (RecDataArguments, EvalArguments, ModelConfig)


class _IndexedBuilder:
    """A `PromptBuilder` view for a shard: local row j is built as global row `indices[j]`."""

    def __init__(self, builder, indices: Sequence[int]):
        self.builder, self.indices = builder, list(indices)

    def build(self, example, index: int):
        return self.builder.build(example, self.indices[index])

    def completion(self, item: str):
        return self.builder.completion(item)


def combine(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prompt-weighted mean of per-shard metric dicts (`n` summed); exact for means such as HR@k and NDCG@k."""
    parts = [p for p in parts if p.get("n")]
    total = sum(p["n"] for p in parts)
    if not total:
        return {"n": 0}
    keys = [k for k, v in parts[0].items() if k not in MEAN_KEYS_SKIP and isinstance(v, (int, float))]
    out: dict[str, Any] = {k: sum(p[k] * p["n"] for p in parts) / total for k in keys}
    out["n"] = total
    return out


def _merge_predictions(shard_dirs: list[Path], shard_indices: list[list[int]], target: Path) -> None:
    rows = []
    for directory, indices in zip(shard_dirs, shard_indices):
        file = directory / "predictions.jsonl"
        if file.exists():
            for line in file.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                row["index"] = indices[row["index"]]
                rows.append(row)
    rows.sort(key=lambda r: r["index"])
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


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
    """Evaluate `examples` with the ranking and/or generation protocol on all processes; same result on every one.

    Returns `{"ranking": {...}, "generation": {...}, "baselines": {...}, "leak_check": {...}, "n": N}` (the
    protocols asked for; baselines and leak check when `train_examples` is given). With `output_dir`, the main
    process writes `<output_dir>/<protocol>/predictions.jsonl` for each protocol.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from trl_dynamicpo.recsys import evaluate_generation, evaluate_ranking

    state = PartialState()
    rank, world = state.process_index, state.num_processes
    indices = list(range(rank, len(examples), world))
    shard = [examples[i] for i in indices]
    view = _IndexedBuilder(builder, indices)
    progress = show_progress and state.is_local_main_process
    results: dict[str, Any] = {"n": len(examples)}
    protocols = ["ranking", "generation"] if protocol == "both" else [protocol]
    for name in protocols:
        shard_dir = None if output_dir is None else Path(output_dir) / name / f".shard-{rank}"
        if name == "ranking":
            metrics = evaluate_ranking(
                model, tokenizer, shard, view, batch_size=batch_size, output_dir=shard_dir, show_progress=progress
            )
        else:
            metrics = evaluate_generation(
                model, tokenizer, shard, view, batch_size=batch_size, max_new_tokens=max_new_tokens,
                output_dir=shard_dir, show_progress=progress,
            )  # fmt: skip
        parts = gather_object([metrics]) if world > 1 else [metrics]
        all_indices = gather_object([indices]) if world > 1 else [indices]
        results[name] = combine(parts)
        state.wait_for_everyone()
        if output_dir is not None and state.is_main_process:
            dirs = [Path(output_dir) / name / f".shard-{r}" for r in range(world)]
            _merge_predictions(dirs, all_indices, Path(output_dir) / name)
            for directory in dirs:
                shutil.rmtree(directory, ignore_errors=True)
            (Path(output_dir) / name / "metrics.json").write_text(
                json.dumps({"protocol": name, **results[name]}, indent=2) + "\n", encoding="utf-8"
            )
        state.wait_for_everyone()
    if train_examples:
        from trl_dynamicpo.recsys import baseline_metrics, leak_check

        results["baselines"] = baseline_metrics(train_examples, examples)
        results["leak_check"] = leak_check(train_examples, examples)
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
    """Evaluate `model_args.model_name_or_path` (model or adapter folder) and write `metrics.json`."""
    from accelerate import PartialState
    from transformers import set_seed

    from .data import load_rec_data, prompt_builder
    from .modeling import load_for_eval, require_model_path
    from .parsing import has_accelerator

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
    from ..packing import compact_lm_head_on_cpu

    with compact_lm_head_on_cpu():
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


def main(argv: Sequence[str] | None = None) -> int:
    from accelerate import PartialState

    from .parsing import parse_command

    data_args, eval_args, model_args = parse_command("eval", dataclass_types(), argv)
    results = run_eval(data_args, eval_args, model_args)
    state = PartialState()
    if state.is_main_process:
        print(format_summary(results, f"{results['model']} on {results['dataset']} ({results['split']}, "
                                      f"{results['candidates']} candidates)"))  # fmt: skip
    state.destroy_process_group()
    return 0
