"""LastFM end to end with the pipeline's Python API: SFT -> DynamicPO (and, optionally, the DMPO baseline) -> ranking
and generation evaluation, with leak-free candidate lists.

    python examples/lastfm_end_to_end.py                                   # bundled sample, small model, CPU
    python examples/lastfm_end_to_end.py --data_dir /data/lastfm --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
        --max_train_samples 20000 --compare_dmpo                           # full data (GPU advised)

`--data_dir` holds the S-DPO-format files: `train.json[l][.gz]`, `val*`/`valid*` and optionally `test*`, and the
catalogue `items.txt` (or S-DPO's `id2name.txt`), `id::name` per line. Without `--model_name_or_path` a small
model is built for the data (every item one token), as in `trl-dynamicpo quickstart`.

Every stage is what the CLI command runs: the script writes `<output_dir>/recipe.yaml` and calls
`run_sft` / `run_train` / `run_eval` on `resolve_recipe(recipe, command, variant, overrides)`, in this process,
as `trl-dynamicpo sft|train|eval --config <output_dir>/recipe.yaml` would; add `--launch` to print those commands
instead (to run them yourself, e.g. under `accelerate launch`).
"""

import argparse
import json
from pathlib import Path

import yaml

from trl_dynamicpo.pipeline import resolve_recipe, run_eval, run_sft, run_train


RUN = {"sft": run_sft, "train": run_train, "eval": run_eval}


def find(data_dir: Path, *patterns: str) -> str | None:
    for pattern in patterns:
        hits = sorted(data_dir.glob(pattern))
        if hits:
            return str(hits[0])
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="folder with the full LastFM files (default: the bundled sample)")
    parser.add_argument("--model_name_or_path", help="base model (default: a small one built for the data)")
    parser.add_argument("--output_dir", default="lastfm-end-to-end")
    parser.add_argument("--max_train_samples", type=int, default=1500)
    parser.add_argument("--max_eval_samples", type=int, default=300)
    parser.add_argument("--num_negatives", type=int, default=15)
    parser.add_argument("--use_peft", action="store_true", help="LoRA (add --load_in_4bit for QLoRA)")
    parser.add_argument("--load_in_4bit", action="store_true")
    parser.add_argument("--compare_dmpo", action="store_true", help="also train and evaluate plain DMPO")
    parser.add_argument("--launch", action="store_true", help="only write the recipe and print the commands")
    args = parser.parse_args()
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    data = {}
    if args.data_dir:
        data_dir = Path(args.data_dir)
        data = {
            "train_file": find(data_dir, "train.json*", "*train*.json*"),
            "eval_file": find(data_dir, "val*.json*", "valid*.json*", "*val*.json*"),
            "test_file": find(data_dir, "test*.json*", "*test*.json*"),
            "items_file": find(data_dir, "items.txt", "id2name.txt"),
            "dataset_name": "lastfm",
        }
        data = {k: v for k, v in data.items() if v}
        if "train_file" not in data:
            raise SystemExit(f"no training file in {data_dir}")

    model = args.model_name_or_path
    if model is None:
        from trl_dynamicpo.pipeline import RecDataArguments, load_rec_data
        from trl_dynamicpo.recsys import PromptBuilder, read_catalogue
        from trl_dynamicpo.tiny import build_recommender_lm

        rec = load_rec_data(RecDataArguments(**data, max_train_samples=args.max_train_samples), need=("train",))
        catalogue = read_catalogue(data["items_file"]) if "items_file" in data else None
        model = str(out / "base")
        build_recommender_lm(PromptBuilder().training_texts(rec.train), catalogue or rec.catalogue, hidden_size=128,
                             num_layers=2, output_dir=model)  # fmt: skip

    recipe = {
        "model_name_or_path": model,
        **data,
        "candidates": "leak_free",
        "num_negatives": args.num_negatives,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "use_peft": args.use_peft or args.load_in_4bit,
        "load_in_4bit": args.load_in_4bit,
        "gradient_checkpointing": False,
        "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 32,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "tensorboard",
        "seed": 0,
        "sft": {"output_dir": str(out / "sft"), "num_train_epochs": 2, "learning_rate": 3e-3},
        "train": {
            "model_name_or_path": str(out / "sft"),
            "output_dir": str(out / "dynamicpo"),
            "num_train_epochs": 1,
            "learning_rate": 1e-4,
            "beta": 1.0,
        },
        "eval": {"model_name_or_path": str(out / "dynamicpo"), "protocol": "both", "batch_size": 32},
        "variants": {"dmpo_plain": {"boundary_selection": False, "dynamic_beta": False, "output_dir": str(out / "dmpo")}},
    }
    if args.model_name_or_path is not None:  # a real LLM: LoRA-sized learning rates
        recipe["sft"]["learning_rate"], recipe["train"]["learning_rate"] = 1e-4, 1e-5
    config = out / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")

    # (command, variant, overrides): the CLI's `--config recipe.yaml [--variant NAME] [--key value ...]`
    stages = [
        ("sft", None, {}),
        ("eval", None, {"model_name_or_path": str(out / "sft"), "protocol": "ranking"}),
        ("train", None, {}),
        ("eval", None, {}),
    ]
    if args.compare_dmpo:
        stages += [("train", "dmpo_plain", {}), ("eval", "dmpo_plain", {})]
    for command, variant, overrides in stages:
        flags = [*(["--variant", variant] if variant else []), *(f"--{k} {v}" for k, v in overrides.items())]
        print(" ".join(["trl-dynamicpo", command, "--config", str(config), *flags]), flush=True)
        if not args.launch:
            RUN[command](*resolve_recipe(config, command, variant, overrides))
    if args.launch:
        return

    print("\nranking on the validation prompts (leak-free candidates):")
    for name, folder in [("SFT", "sft"), ("DynamicPO", "dynamicpo")] + ([("DMPO", "dmpo")] if args.compare_dmpo else []):
        metrics = json.loads((out / folder / "eval" / "metrics.json").read_text())["ranking"]
        print(f"  {name:<10} HR@1 {metrics['hr@1']:.4f}  HR@5 {metrics['hr@5']:.4f}  NDCG@5 {metrics['ndcg@5']:.4f}")


if __name__ == "__main__":
    main()
