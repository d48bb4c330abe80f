"""Evaluate a causal LM as a recommender: candidate ranking by log-likelihood, and greedy generation.

- `evaluate_ranking` scores every candidate c of a prompt x by log pi(c | x) (summed over the completion tokens,
  EOS included for standard-format prompts, exactly as DynamicPO trains) with `trl_dynamicpo.scoring`, and reports
  HR@k / NDCG@k / MRR with pessimistic ties (`ranking_metrics`).
- `evaluate_generation` follows the papers' protocol: greedy decoding, at most 20 new tokens, then HR@1 and
  ValidRatio from the answer text (`generation_metrics`).

Both write `metrics.json` and `predictions.jsonl` (one line per prompt) when given an `output_dir`, and add the
non-LLM baselines and the candidate-list leak check when given the training prompts. `RecEvalCallback` runs the
ranking evaluation inside a `transformers.Trainer` and logs `eval_rank_hr@1` etc.

On several processes (`accelerate launch`, `torchrun`, or a trainer's Accelerate state: any run with a
`torch.distributed` group of more than one process), both evaluations split the prompts between the processes,
gather the per-prompt results and return the same metrics on every process, equal to a single-process run's.
Prompt i keeps its index (so its paraphrase), the main process alone writes the files, and the baselines and the
leak check are computed once, on the main process, and sent to the others.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from .baselines import baseline_scores
from .candidates import leak_check
from .metrics import generation_metrics, parse_answer, ranking_metrics, target_ranks
from .prompts import PromptBuilder
from .readers import RecExample


class _Shard:
    """The prompts this process evaluates, and the way back from per-process to all-prompt results.

    Outside a multi-process run the shard is every prompt. Otherwise process r of W takes prompts r, r + W, ...
    When the model's parameters are sharded across the processes (FSDP, DeepSpeed), every forward pass is a
    collective operation, so every process must run as many as the others: a shorter shard is then padded with a
    repeat of a prompt, whose result is dropped when gathering.
    """

    def __init__(self, count: int):
        self.count = count
        self.state = _multi_process_state()
        if self.state is None:
            self.indices = list(range(count))
            return
        from accelerate.utils import DistributedType

        rank, world = self.state.process_index, self.state.num_processes
        self.indices = list(range(rank, count, world))
        if count and self.state.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            size = -(-count // world)
            self.indices += [self.indices[-1] if self.indices else 0] * (size - len(self.indices))

    @property
    def is_main_process(self) -> bool:
        return self.state is None or self.state.is_main_process

    @property
    def is_local_main_process(self) -> bool:
        return self.state is None or self.state.is_local_main_process

    def gather(self, values: Sequence) -> list:
        """This process's per-prompt values (aligned with `indices`) -> every prompt's, in prompt order."""
        if self.state is None:
            return list(values)
        from accelerate.utils import gather_object

        merged = {}
        for index, value in gather_object(list(zip(self.indices, values))):
            merged.setdefault(index, value)  # a padding repeat comes after the original
        return [merged[i] for i in range(self.count)]

    def on_main_process(self, compute):
        """`compute()` run on the main process only; every process gets its result."""
        if self.state is None:
            return compute()
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([compute() if self.state.is_main_process else None])[0]


def _multi_process_state():
    """Accelerate's state when this runs in a `torch.distributed` group of several processes, else None."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from accelerate import PartialState

    state = PartialState()
    return state if state.num_processes > 1 else None


def _reference_numbers(
    shard: _Shard, train_examples: Sequence[RecExample] | None, examples: Sequence[RecExample], ks: Sequence[int]
) -> tuple[dict, dict[str, list[int]]]:
    """(`baselines` metrics and `leak_check`, each baseline's per-prompt target rank), on the main process only."""
    if train_examples is None:
        return {}, {}

    def compute():
        targets = [ex.target_index for ex in examples]
        scores = baseline_scores(train_examples, examples)
        numbers = {
            "baselines": {name: ranking_metrics(s, targets, ks) for name, s in scores.items()},
            "leak_check": leak_check(train_examples, examples),
        }
        return numbers, {name: target_ranks(s, targets).tolist() for name, s in scores.items()}

    return shard.on_main_process(compute)


def _write_outputs(shard: _Shard, output_dir: str | os.PathLike | None, metrics: dict, predictions) -> None:
    """`metrics.json` and `predictions.jsonl` (`predictions()` builds the rows), from the main process only."""
    if output_dir is None or not shard.is_main_process:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
        for row in predictions():
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_hits(path: str | os.PathLike, protocol: str = "ranking", *, baseline: str | None = None) -> list[int]:
    """Per-prompt HR@1 hits (0/1) from an evaluation's `predictions.jsonl`, in prompt order (for paired tests).

    With `baseline` (e.g. `"cooccurrence"`), the hits of that baseline on the same prompts instead: a ranking
    evaluation run with `train_examples` records each baseline's rank of the target.
    """
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: r["index"])
    if baseline is not None:
        if protocol != "ranking" or any(baseline not in r.get("baseline_ranks", {}) for r in rows):
            raise ValueError(f"{path} has no per-prompt ranks of the {baseline!r} baseline (a ranking evaluation "
                             "with train_examples / --baselines writes them)")  # fmt: skip
        return [int(r["baseline_ranks"][baseline] == 1) for r in rows]
    if protocol == "ranking":
        return [int(r["rank"] == 1) for r in rows]
    return [int(bool(r["hit"])) for r in rows]


def score_candidates(
    model,
    tokenizer,
    examples: Sequence[RecExample],
    builder: PromptBuilder,
    *,
    indices: Sequence[int] | None = None,
    batch_size: int = 8,
    show_progress: bool = True,
    desc: str = "Scoring candidates",
) -> list[list[float]]:
    """log pi(candidate | prompt) of every candidate of `examples[i]` for each i in `indices` (default: all), aligned
    with `example.candidates`: prompt i is `builder.build(examples[i], i)`, candidate c's completion
    `builder.completion(c)`, scored as the trainer scores completions (`score_completions`). The scores the ranking
    evaluation ranks by, and the input of hard-negative mining (`preference_dataset(..., scores=...)`)."""
    from trl_dynamicpo.scoring import score_completions

    indices = range(len(examples)) if indices is None else indices
    return score_completions(
        model,
        tokenizer,
        [builder.build(examples[i], i) for i in indices],
        [[builder.completion(c) for c in examples[i].candidates] for i in indices],
        batch_size=batch_size,
        show_progress=show_progress,
        desc=desc,
    )


def evaluate_ranking(
    model,
    tokenizer,
    examples: Sequence[RecExample],
    builder: PromptBuilder,
    *,
    batch_size: int = 8,
    output_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    train_examples: Sequence[RecExample] | None = None,
    ks: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """Rank each prompt's candidates by log pi(candidate | prompt) and report ranking metrics.

    Prompt i is `builder.build(examples[i], i)` and candidate c's completion is `builder.completion(c)`.

    Args:
        model, tokenizer: the causal LM and its tokenizer. Its train/eval mode is left as found.
        examples: the evaluation prompts (split between the processes of a multi-process run: see the module docstring).
        builder: prompt format (must match training).
        batch_size: prompts per forward pass.
        output_dir: where to write `metrics.json` and `predictions.jsonl` (target, candidates, scores, rank).
        show_progress: progress bar.
        train_examples: when given, the result also holds `baselines` (`baseline_metrics`) and `leak_check`, and
            each prediction row the baselines' ranks of its target (`baseline_ranks`).
        ks: cut-offs for HR@k and NDCG@k.

    Returns:
        `{"hr@1", "ndcg@1", "hr@5", "ndcg@5", "mrr", "n"}` (plus `baselines` and `leak_check` with
        `train_examples`).
    """
    shard = _Shard(len(examples))
    scores = score_candidates(
        model, tokenizer, examples, builder, indices=shard.indices, batch_size=batch_size,
        show_progress=show_progress and shard.is_local_main_process, desc="Ranking candidates",
    )  # fmt: skip
    scores = shard.gather(scores)
    targets = [ex.target_index for ex in examples]
    metrics: dict[str, Any] = ranking_metrics(scores, targets, ks)
    reference, baseline_ranks = _reference_numbers(shard, train_examples, examples, ks)
    metrics.update(reference)

    def predictions():
        ranks = target_ranks(scores, targets).tolist()
        for i, ex in enumerate(examples):
            row = {
                "index": i,
                "target": ex.target,
                "target_index": targets[i],
                "candidates": ex.candidates,
                "scores": scores[i],
                "rank": ranks[i],
                "top": ex.candidates[max(range(len(scores[i])), key=scores[i].__getitem__)],
            }
            if baseline_ranks:  # the baselines' ranks of the target, for paired model-vs-baseline tests
                row["baseline_ranks"] = {name: r[i] for name, r in baseline_ranks.items()}
            yield row

    _write_outputs(shard, output_dir, {"protocol": "ranking", **metrics}, predictions)
    return metrics


def _prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Token ids of a prompt as the trainers see it (TRL's tokenization, generation prompt for messages)."""
    if isinstance(prompt, list):
        out = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])
    return list(tokenizer(text=prompt)["input_ids"])


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 20,
    show_progress: bool = True,
    num_answers: int = 1,
) -> list[str] | list[list[str]]:
    """Greedy answers (decoded new tokens, special tokens skipped) for each prompt, batched with left padding.

    Prompts are batched in order of length to limit padding; answers come back in the input order. With
    `num_answers` > 1, each prompt gets its `num_answers` most likely answers (beam search with that many beams,
    best first) as a list.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
    device = next(model.parameters()).device
    encoded = [_prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    answers: list = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="Generating", disable=not show_progress):
            batch = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = encoded[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=num_answers,
                num_return_sequences=num_answers,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            for row, i in enumerate(batch):
                mine = texts[row * num_answers : (row + 1) * num_answers]
                answers[i] = mine[0] if num_answers == 1 else mine
    finally:
        model.train(was_training)
    return answers


def generated_negatives(
    model, tokenizer, examples: Sequence[RecExample], builder: PromptBuilder, num_negatives: int, *,
    batch_size: int = 8, max_new_tokens: int = 20, show_progress: bool = True,
) -> list[list[str]]:
    """The model's own most likely wrong answers per prompt: its `num_negatives` + 1 best answers (beam search),
    stripped, without the target and repeats, as item names for `preference_dataset(..., rejected_items=...)`.
    They need not be candidates of the prompt: items from the whole catalogue the model would name instead."""
    prompts = [builder.build(ex, i) for i, ex in enumerate(examples)]
    answers = generate_answers(
        model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, show_progress=show_progress,
        num_answers=num_negatives + 1,
    )  # fmt: skip
    out = []
    for ex, texts in zip(examples, answers):
        names = [t.strip() for t in texts]
        out.append([n for n in dict.fromkeys(names) if n and n != ex.target][:num_negatives])
    return out


def evaluate_generation(
    model,
    tokenizer,
    examples: Sequence[RecExample],
    builder: PromptBuilder,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 20,
    output_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    train_examples: Sequence[RecExample] | None = None,
) -> dict[str, Any]:
    """The papers' generation protocol: greedy answers (left padding, `max_new_tokens`), then HR@1 and ValidRatio.

    Args:
        model, tokenizer: the causal LM and its tokenizer.
        examples: the evaluation prompts; prompt i is `builder.build(examples[i], i)` (split between the processes
            of a multi-process run: see the module docstring).
        builder: prompt format (must match training).
        batch_size: prompts per `generate` call.
        max_new_tokens: generation budget (20 in the papers).
        output_dir: where to write `metrics.json` and `predictions.jsonl` (target, candidates, answer, the
            candidates it names, valid, hit).
        show_progress: progress bar.
        train_examples: when given, the result also holds `baselines` and `leak_check`.

    Returns:
        `{"hr@1", "valid_ratio", "n"}` (plus `baselines` and `leak_check` with `train_examples`).
    """
    shard = _Shard(len(examples))
    answers = generate_answers(
        model,
        tokenizer,
        [builder.build(examples[i], i) for i in shard.indices],
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        show_progress=show_progress and shard.is_local_main_process,
    )
    answers = shard.gather(answers)
    metrics: dict[str, Any] = generation_metrics(answers, examples)
    metrics.update(_reference_numbers(shard, train_examples, examples, ks=(1, 5))[0])

    def predictions():
        for i, (ex, answer) in enumerate(zip(examples, answers)):
            named = parse_answer(answer, ex.candidates)
            yield {
                "index": i,
                "target": ex.target,
                "candidates": ex.candidates,
                "answer": answer,
                "parsed": [ex.candidates[j] for j in named],
                "valid": len(named) == 1,
                "hit": named == [ex.target_index],
            }

    metadata = {"protocol": "generation", "max_new_tokens": max_new_tokens}
    _write_outputs(shard, output_dir, {**metadata, **metrics}, predictions)
    return metrics


class RecEvalCallback(TrainerCallback):
    """Run `evaluate_ranking` on a small example list during training and log `eval_rank_hr@1`, etc.

    In a multi-process run every process scores its share of the prompts and logs the same (gathered) values.

    It runs after every evaluation of the trainer (`on_evaluate`; the values are added to the metrics dict
    `trainer.evaluate()` returns and to the matching `state.log_history` entry) and, with `eval_steps`, every
    `eval_steps` optimiser steps as well. Pass `trainer` (or call `bind(trainer)`) to send the values through
    `trainer.log`, so that reporting integrations (TensorBoard, W&B, ...) receive them too.

    Args:
        examples: evaluation prompts (keep it small: every candidate of every prompt is scored).
        builder: prompt format used in training.
        tokenizer: defaults to the trainer's processing class.
        eval_steps: also evaluate every this many steps (None: only with the trainer's evaluations).
        batch_size: prompts per forward pass.
        prefix: metric name prefix.
        output_dir: if set, each run writes `metrics.json` / `predictions.jsonl` under `output_dir/step-N`.
        trainer: optional trainer to log through.
    """

    def __init__(
        self,
        examples: Sequence[RecExample],
        builder: PromptBuilder,
        tokenizer=None,
        *,
        eval_steps: int | None = None,
        batch_size: int = 8,
        prefix: str = "eval_rank_",
        output_dir: str | os.PathLike | None = None,
        trainer=None,
    ):
        if eval_steps is not None and eval_steps < 1:
            raise ValueError(f"eval_steps must be positive or None, got {eval_steps}")
        self.examples = list(examples)
        self.builder = builder
        self.tokenizer = tokenizer
        self.eval_steps = eval_steps
        self.batch_size = batch_size
        self.prefix = prefix
        self.output_dir = output_dir
        self.trainer = trainer
        self.history: list[dict[str, float]] = []
        self._last_step: int | None = None

    def bind(self, trainer) -> RecEvalCallback:
        """Log through `trainer.log` from now on; returns self."""
        self.trainer = trainer
        return self

    def evaluate(self, model, tokenizer, step: int = 0) -> dict[str, float]:
        """Run the ranking evaluation now and return the prefixed numeric metrics."""
        tokenizer = tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("RecEvalCallback needs a tokenizer (pass one, or use it inside a Trainer)")
        out_dir = None if self.output_dir is None else Path(self.output_dir) / f"step-{step}"
        metrics = evaluate_ranking(
            model, tokenizer, self.examples, self.builder, batch_size=self.batch_size, output_dir=out_dir,
            show_progress=False,
        )  # fmt: skip
        return {f"{self.prefix}{k}": float(v) for k, v in metrics.items() if k != "n"}

    def _run(self, state, model, processing_class) -> tuple[dict[str, float] | None, bool]:
        """(results, fresh): evaluates at most once per global step and reuses that step's results."""
        if self._last_step == state.global_step and self.history:
            return {k: v for k, v in self.history[-1].items() if k != "step"}, False
        if model is None:
            return None, False
        self._last_step = state.global_step
        results = self.evaluate(model, self.tokenizer or processing_class, state.global_step)
        self.history.append({"step": state.global_step, **results})
        return results, True

    def _record(self, state, results: dict[str, float], merge: bool) -> None:
        if self.trainer is not None:
            self.trainer.log(results)
        elif merge and state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(results)  # the entry the trainer just logged for this evaluation
        else:
            state.log_history.append({**results, "step": state.global_step})

    def on_evaluate(self, args, state, control, model=None, processing_class=None, metrics=None, **kwargs):
        results, fresh = self._run(state, model, processing_class)
        if results is None:
            return
        if metrics is not None:
            metrics.update(results)
        if fresh:
            self._record(state, results, merge=True)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not self.eval_steps or state.global_step % self.eval_steps:
            return
        results, fresh = self._run(state, model, processing_class)
        if results is not None and fresh:
            # `trainer.log` clears `should_log`, which would drop the trainer's own loss log of this step.
            should_log = control.should_log
            self._record(state, results, merge=False)
            control.should_log = should_log
            return control
