"""Running a sweep: the SFT stage (once, cached), its evaluation, then one `train` + `eval` per grid point.

Each run is the recipe's `train` stage with the point's settings as overrides (`resolve_recipe(recipe, "train",
overrides=...)`, what `trl-dynamicpo train --config RECIPE --multi_negative_loss ...` parses) followed by the `eval`
of its output on every evaluation set, run in this process with the pipeline's own functions, so a sweep of a recipe
measures what the recipe trains (tiny model on CPU, or LoRA / QLoRA under `accelerate launch`). Every process of a
distributed launch walks the same grid; the main one writes the files. A finished run leaves `result.json` in its
folder and is skipped next time (same settings), so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pipeline.arguments import SweepArguments
from ..pipeline.evaluate import run_eval
from ..pipeline.recipes import load_recipe, parse_overrides, resolve_recipe
from ..pipeline.records import RUN_RECORD
from ..pipeline.runtime import has_accelerator, setup_logging
from ..pipeline.sft import run_sft
from ..pipeline.train import run_train
from ..recsys.evaluation import read_hits
from .grid import GridPoint, build_grid
from .report import write_report


logger = logging.getLogger(__name__)

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
    """Everything a sweep needs besides the grid: the recipe, where to write, the evaluation sets, the overrides."""

    recipe: str
    sweep_dir: Path
    eval_sets: dict[str, str | None]  # name -> test file (None: the recipe's own evaluation split)
    sft_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    eval_overrides: dict[str, Any] = field(default_factory=dict)
    keep_models: bool = True

    def key(self, extra: Mapping[str, Any] | Sequence[Any]) -> str:
        """Cache key of a run: the recipe's settings (its `base:` files included), the plan's overrides, the
        evaluation sets and the run's own settings `extra`."""
        blob = json.dumps(
            [load_recipe(self.recipe), self.sft_overrides, self.train_overrides, self.eval_overrides,
             sorted(self.eval_sets.items()), extra],
            sort_keys=True, default=str,
        )  # fmt: skip
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _state():
    from accelerate import PartialState

    return PartialState(cpu=not has_accelerator())


def sft_model_path(plan: SweepPlan) -> str:
    """The model `train` starts from in this recipe (normally the SFT output)."""
    _, _, model_args = resolve_recipe(plan.recipe, "train", overrides=plan.train_overrides)
    return model_args.model_name_or_path


def ensure_sft(plan: SweepPlan, *, log=print) -> str:
    """Run the recipe's `sft` stage unless it has finished before; returns the model `train` starts from.

    When `train` starts from the `sft` stage's output, that stage counts as finished once its run record
    (`trl_dynamicpo_run.json`, written after the model) exists, so an SFT killed half-way is trained again; a model
    from elsewhere (a Hub id, another folder) is used as it is.
    """
    path = sft_model_path(plan)
    args = resolve_recipe(plan.recipe, "sft", overrides=plan.sft_overrides)
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
    trainer = run_sft(*args)
    del trainer
    if state.is_main_process:
        Path(path, "sweep_sft.json").write_text(json.dumps({"train_time_s": time.time() - start}) + "\n")
    state.wait_for_everyone()
    return path


def evaluate_model(plan: SweepPlan, model_path: str, out_dir: Path, *, baselines: bool = False) -> dict[str, Any]:
    """The recipe's `eval` of `model_path` on every evaluation set (protocols as its `eval` section says);
    returns {set: {protocol: metrics with per-prompt `hits`}}.

    With `baselines`, each set also gets the non-LLM baselines and the leak check (done once, for the SFT model).
    """
    results: dict[str, Any] = {}
    for name, test_file in plan.eval_sets.items():
        overrides = {**plan.eval_overrides, "model_name_or_path": model_path, "output_dir": str(out_dir / name),
                     "baselines": baselines}  # fmt: skip
        if test_file is not None:
            overrides.update(test_file=test_file, split="test")
        metrics = run_eval(*resolve_recipe(plan.recipe, "eval", overrides=overrides))
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
    run_dir = plan.sweep_dir / "runs" / point.name
    key = plan.key(point.settings())
    cached = _load_cached(run_dir, key)
    if cached is not None:
        return cached
    model_dir = run_dir / "model"
    args = resolve_recipe(plan.recipe, "train",
                          overrides={**plan.train_overrides, **point.settings(), "output_dir": str(model_dir)})  # fmt: skip
    log(f"{point.display}: training")
    start = time.time()
    trainer = run_train(*args)
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


def run_sweep(sweep_args: SweepArguments, recipe: str, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or resume) the sweep of `sweep_args` over the recipe file `recipe`; returns {"reference", "results",
    "files"} (the SFT model's evaluation, one result per grid point, the report files written by the main process).

    `notes` are lines added to `summary.md`.
    """
    from tqdm.auto import tqdm

    setup_logging()
    state = _state()
    sweep_dir = Path(sweep_args.sweep_dir)
    eval_sets = {"eval": None, **{Path(f).name.split(".")[0]: f for f in sweep_args.eval_files}}
    plan = SweepPlan(
        recipe=recipe,
        sweep_dir=sweep_dir,
        eval_sets=eval_sets,
        sft_overrides=parse_overrides(sweep_args.sft_overrides),
        train_overrides=parse_overrides(sweep_args.train_overrides),
        eval_overrides=parse_overrides(sweep_args.eval_overrides),
        keep_models=sweep_args.keep_models,
    )
    grid = build_grid(
        sweep_args.ks, sweep_args.objectives, sweep_args.variants, sweep_args.seeds,
        ablation_ks=sweep_args.ablation_ks, extra_seeds=sweep_args.extra_seeds, extra_seed_ks=sweep_args.extra_seed_ks,
    )  # fmt: skip

    def log(message: str) -> None:
        if state.is_main_process:
            logger.info(message)

    log(f"Sweep of {len(grid)} runs into {sweep_dir}")
    sft_path = ensure_sft(plan, log=log)
    reference = reference_result(plan, sft_path, log=log)
    results = []
    for point in tqdm(grid, desc="Sweep", disable=not state.is_local_main_process):
        results.append(run_point(plan, point, log=log))
    files = {}
    if state.is_main_process:
        files = write_report(sweep_dir, reference, results, sweep_args.title, notes)
        logger.info("Wrote %s", ", ".join(str(p) for p in files.values()))
    state.wait_for_everyone()
    return {"reference": reference, "results": results, "files": files}
