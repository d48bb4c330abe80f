"""The Python API in one page: data, the trainer, evaluation. Offline, about a minute on a laptop CPU.

    python examples/python_api.py

1. `trl_dynamicpo.recsys`: read S-DPO-format prompts (here the bundled LastFM sample, with leak-free candidate
   lists), turn them into prompts and a multi-negative preference dataset (`rejected` = K items).
2. `DynamicPOConfig` / `DynamicPOTrainer`: `trl.DPOConfig` / `trl.DPOTrainer` with K negatives, dynamic boundary
   negative selection and dual-margin beta; the baselines are the same trainer with the mechanisms switched off.
3. `evaluate_ranking`: rank each prompt's 20 candidates by log pi(candidate | prompt): HR@1, HR@5, NDCG@5.

The model here starts from random weights, so the numbers only show the calls; for a real comparison, fine-tune
first (SFT), as `trl-dynamicpo quickstart` and the recipes do, and use the SFT model as policy and reference.
"""

import copy
import tempfile

from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.recsys import (
    PromptBuilder,
    baseline_metrics,
    evaluate_ranking,
    load_sample,
    preference_dataset,
    sample_catalogue,
)
from trl_dynamicpo.tiny import build_recommender_lm


def main():
    # 1. Data: leak-free candidate lists (the default), prompts, K = 7 sampled negatives per prompt.
    train_examples = load_sample("train")[:256]
    eval_examples = load_sample("val")[:48]
    builder = PromptBuilder(domain="music")
    dataset = preference_dataset(train_examples, builder, num_negatives=7, seed=0)
    print(dataset[0]["prompt"], "->", dataset[0]["chosen"], "vs", dataset[0]["rejected"][:3], "...")

    # A small offline model: every artist is one token of the tokenizer.
    model, tokenizer = build_recommender_lm(
        builder.training_texts(train_examples), sample_catalogue(), vocab_size=500, hidden_size=64, num_layers=2
    )

    # 2. DynamicPO (on DMPO); `boundary_selection=False, dynamic_beta=False` would be the plain DMPO baseline.
    before = evaluate_ranking(model, tokenizer, eval_examples, builder, show_progress=False)
    config = DynamicPOConfig(
        output_dir=tempfile.mkdtemp(prefix="dynamicpo-"),
        multi_negative_loss="dmpo",
        boundary_selection=True,
        dynamic_beta=True,
        beta=1.0,
        learning_rate=1e-3,
        per_device_train_batch_size=16,
        max_steps=12,
        logging_steps=4,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
    )
    trainer = DynamicPOTrainer(
        model=model, ref_model=copy.deepcopy(model), args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()

    # 3. Ranking evaluation before and after, with the non-LLM baselines for scale.
    after = evaluate_ranking(trainer.model, tokenizer, eval_examples, builder, show_progress=False)
    baselines = baseline_metrics(train_examples, eval_examples)
    rows = [("random init", before), ("after DynamicPO", after), ("popularity", baselines["popularity"])]
    for name, metrics in rows:
        print(f"{name:>16}: HR@1 {metrics['hr@1']:.3f}  HR@5 {metrics['hr@5']:.3f}  NDCG@5 {metrics['ndcg@5']:.3f}")


if __name__ == "__main__":
    main()
