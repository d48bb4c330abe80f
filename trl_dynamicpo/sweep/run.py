"""Running a sweep: the SFT stage (once, cached), its evaluation, then one `train` + `eval` per grid point.

Each run is exactly `trl-dynamicpo train --config RECIPE <the point's flags>` followed by `trl-dynamicpo eval` of
its output on every evaluation set, run in this process through the CLI's own functions, so a sweep of a recipe
measures what the recipe trains (tiny model on CPU, or LoRA / QLoRA under `accelerate launch`). Every process of a
distributed launch walks the same grid; the main one writes the files. A finished run leaves `result.json` in its
folder and is skipped next time (same settings), so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..recsys.evaluation import read_hits
from .grid import GridPoint


RESULT_FILE = "result.json"
REFERENCE = "sft"
# Keys of the trainer logs kept as per-step curves (and their short names in curves.csv).
CURVE_KEYS = {
    "loss": "loss",
    "rewards/accuracies": "reward_acc",
    "rewards/margins": "reward_margin",
    "logps/chosen": "logp_chosen",
    "logps/rejected": "logp_rejected",
    "dynamicpo/boundary_negatives": "boundary_negatives",
    "dynamicpo/clustering_fallback": "clustering_fallback",
    "dynamicpo/beta_mean": "beta_mean",
    "dynamicpo/boundary_grad_share": "boundary_grad_share",
    "dynamicpo/chosen_logp_shift": "chosen_logp_shift",
    "dynamicpo/answer_token_overlap": "answer_token_overlap",
    "eval_rank_hr@1": "hr1_subset",
    "eval_rank_ndcg@5": "ndcg5_subset",
}


@dataclass
class SweepPlan:
    """Everything a sweep needs besides the grid: the recipe, where to write, and the evaluation sets."""

    recipe: str
    sweep_dir: Path
    eval_sets: dict[str, str | None]  # name -> test file (None: the recipe's own evaluation split)
    sft_args: list[str] = field(default_factory=list)
    train_args: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)
    keep_models: bool = True

    def key(self, extra: Sequence[str]) -> str:
        """Cache key of a run: the recipe's settings (its `base:` files included), the plan's flags and the run's own
        flags."""
        from ..cli.parsing import load_recipe

        settings = json.dumps(load_recipe(self.recipe), sort_keys=True, default=str)
        blob = json.dumps([settings, self.train_args, self.eval_args, sorted(self.eval_sets.items()),
                           list(extra)])  # fmt: skip
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _state():
    from accelerate import PartialState

    from ..cli.parsing import has_accelerator

    return PartialState(cpu=not has_accelerator())


def _config_flags(plan: SweepPlan) -> list[str]:
    return ["--config", plan.recipe]


def sft_model_path(plan: SweepPlan) -> str:
    """The model `train` starts from in this recipe (normally the SFT output)."""
    from ..cli import train
    from ..cli.parsing import parse_command

    _, _, model_args = parse_command("train", train.dataclass_types(), [*_config_flags(plan), *plan.train_args])
    return model_args.model_name_or_path


def ensure_sft(plan: SweepPlan, *, log=print) -> str:
    """Run the recipe's `sft` stage unless it has finished before; returns the model `train` starts from.

    When `train` starts from the `sft` stage's output, that stage counts as finished once its run record
    (`trl_dynamicpo_run.json`, written after the model) exists, so an SFT killed half-way is trained again; a model
    from elsewhere (a Hub id, another folder) is used as it is.
    """
    from ..cli import sft
    from ..cli.common import RUN_RECORD
    from ..cli.parsing import parse_command

    path = sft_model_path(plan)
    args = parse_command("sft", sft.dataclass_types(), [*_config_flags(plan), *plan.sft_args])
    state = _state()
    if Path(args[1].output_dir).resolve() != Path(path).resolve():
        log(f"`train` starts from {path}, not from the recipe's sft output: no SFT stage")
        return path
    done = Path(path, RUN_RECORD).exists()
    state.wait_for_everyone()
    if done:
        log(f"SFT model found at {path}: not retraining it")
        return path
    log(f"SFT: training {path}")
    start = time.time()
    trainer = sft.run_sft(*args)
    del trainer
    if state.is_main_process:
        Path(path, "sweep_sft.json").write_text(json.dumps({"train_time_s": time.time() - start}) + "\n")
    state.wait_for_everyone()
    return path


def evaluate_model(plan: SweepPlan, model_path: str, out_dir: Path, *, baselines: bool = False) -> dict[str, Any]:
    """`trl-dynamicpo eval` of `model_path` on every evaluation set (protocols as the recipe's `eval` section says);
    returns {set: {protocol: metrics with per-prompt `hits`}}.

    With `baselines`, each set also gets the non-LLM baselines and the leak check (done once, for the SFT model).
    """
    from ..cli import evaluate
    from ..cli.parsing import parse_command

    results: dict[str, Any] = {}
    for name, test_file in plan.eval_sets.items():
        flags = [*_config_flags(plan), "--model_name_or_path", model_path, "--output_dir", str(out_dir / name),
                 "--baselines", str(baselines), *plan.eval_args]  # fmt: skip
        if test_file is not None:
            flags += ["--test_file", test_file, "--split", "test"]
        metrics = evaluate.run_eval(*parse_command("eval", evaluate.dataclass_types(), flags))
        entry: dict[str, Any] = {"n": metrics["n"]}
        for protocol in ("ranking", "generation"):
            if protocol in metrics:
                entry[protocol] = {k: v for k, v in metrics[protocol].items() if isinstance(v, (int, float))}
                entry[protocol]["hits"] = read_hits(out_dir / name / protocol / "predictions.jsonl", protocol)
        if baselines and "ranking" in entry:  # per-prompt hits of each baseline, for SFT-vs-baseline paired tests
            path = out_dir / name / "ranking" / "predictions.jsonl"
            entry["ranking"]["baseline_hits"] = {b: read_hits(path, baseline=b) for b in metrics.get("baselines", {})}
        for extra in ("baselines", "leak_check"):
            if extra in metrics:
                entry[extra] = metrics[extra]
        results[name] = entry
    return results


def curves_from_state(output_dir: Path) -> list[dict[str, float]]:
    """Per-step values of `CURVE_KEYS` from the run's `trainer_state.json`."""
    state = Path(output_dir) / "trainer_state.json"
    if not state.exists():
        return []
    history = json.loads(state.read_text(encoding="utf-8")).get("log_history", [])
    by_step: dict[int, dict[str, float]] = {}
    for entry in history:  # a step may have several entries (the loss log, a ranking callback's log)
        values = {short: entry[key] for key, short in CURVE_KEYS.items() if key in entry}
        if values and "train_runtime" not in entry:
            by_step.setdefault(entry.get("step", 0), {}).update(values)
    return [{"step": step, **values} for step, values in sorted(by_step.items())]


def reference_result(plan: SweepPlan, sft_path: str, *, log=print) -> dict[str, Any]:
    """The SFT model's evaluation (the start of every run), cached like a run."""
    out = plan.sweep_dir / "reference"
    key = plan.key(["reference", sft_path])
    cached = _load_cached(out, key)
    if cached is not None:
        return cached
    log(f"Evaluating the SFT model {sft_path}")
    result = {"kind": "reference", "name": REFERENCE, "key": key, "model": sft_path,
              "eval": evaluate_model(plan, sft_path, out / "eval", baselines=True)}  # fmt: skip
    _save(out, result)
    return result


def run_point(plan: SweepPlan, point: GridPoint, *, log=print) -> dict[str, Any]:
    """Train and evaluate one grid point (or load its cached result)."""
    from ..cli import train
    from ..cli.parsing import parse_command

    run_dir = plan.sweep_dir / "runs" / point.name
    flags = [*plan.train_args, *point.train_flags()]
    key = plan.key(flags)
    cached = _load_cached(run_dir, key)
    if cached is not None:
        return cached
    model_dir = run_dir / "model"
    args = parse_command("train", train.dataclass_types(), [*_config_flags(plan), *flags, "--output_dir", str(model_dir)])
    log(f"{point.display}: training")
    start = time.time()
    trainer = train.run_train(*args)
    train_time = time.time() - start
    steps = trainer.state.global_step
    del trainer
    start = time.time()
    evaluation = evaluate_model(plan, str(model_dir), run_dir / "eval")
    result = {
        "kind": "run",
        "name": point.name,
        "key": key,
        "point": {"objective": point.objective, "variant": point.variant, "k": point.k, "seed": point.seed},
        "steps": steps,
        "train_time_s": train_time,
        "eval_time_s": time.time() - start,
        "curves": curves_from_state(model_dir),
        "eval": evaluation,
    }
    _save(run_dir, result)
    state = _state()
    if state.is_main_process and not plan.keep_models:
        shutil.rmtree(model_dir, ignore_errors=True)
    state.wait_for_everyone()
    return result


def _load_cached(folder: Path, key: str) -> dict[str, Any] | None:
    path = folder / RESULT_FILE
    state = _state()
    result = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    state.wait_for_everyone()  # every process decides from the same file before anyone writes a new one
    if result is not None and result.get("key") == key:
        return result
    return None


def _save(folder: Path, result: dict[str, Any]) -> None:
    state = _state()
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (RESULT_FILE + ".tmp")
        tmp.write_text(json.dumps(result) + "\n", encoding="utf-8")
        tmp.replace(folder / RESULT_FILE)  # atomic: a killed sweep never leaves half a result
    state.wait_for_everyone()
