"""An ordinary TRL DPO script turned into DynamicPO: two imports and the dataset change, nothing else.

    python examples/dpo_to_dynamicpo.py                      # offline: a tiny model built on the fly, ~1 minute on CPU
    python examples/dpo_to_dynamicpo.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --max_steps 100

The diff against the TRL script it started from (`trl/scripts/dpo.py`-style):

    -from trl import DPOConfig
    -from trl import DPOTrainer
    +from trl_dynamicpo import DynamicPOConfig as DPOConfig
    +from trl_dynamicpo import DynamicPOTrainer as DPOTrainer

    -dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train")   # rejected: one completion
    +dataset = multi_negative_dataset()                                          # rejected: a list of K completions

`DynamicPOConfig` accepts every `DPOConfig` argument with `DPOConfig`'s defaults (`beta` is TRL's 0.1; the DynamicPO
paper uses 1.0, set by its recipes) and adds `multi_negative_loss` (dmpo / sdpo / mppo), `boundary_selection`,
`dynamic_beta`, `beta_margin`, `beta_scale`. The trainer also accepts TRL's pairwise data unchanged (K = 1, where
DMPO and S-DPO with `dynamic_beta=False` equal the DPO loss).
"""

import argparse
import tempfile

from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_dynamicpo import DynamicPOConfig as DPOConfig
from trl_dynamicpo import DynamicPOTrainer as DPOTrainer


def multi_negative_dataset(num_prompts: int = 256, num_negatives: int = 7):
    """Prompt / chosen / rejected-list rows from the LastFM sample bundled with trl-dynamicpo (offline)."""
    from trl_dynamicpo.recsys import PromptBuilder, load_sample, preference_dataset

    return preference_dataset(load_sample("train")[:num_prompts], PromptBuilder(), num_negatives=num_negatives)


def tiny_model_path() -> str:
    """Stand-in for a Hub id when offline: a small random model + tokenizer saved to a temporary folder."""
    from trl_dynamicpo.recsys import PromptBuilder, load_sample, sample_catalogue
    from trl_dynamicpo.tiny import build_recommender_lm

    path = tempfile.mkdtemp(prefix="tiny-lm-")
    texts = PromptBuilder().training_texts(load_sample("train")[:256])
    build_recommender_lm(texts, sample_catalogue(), vocab_size=400, hidden_size=64, num_layers=2, output_dir=path)
    return path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name_or_path", default=None, help="Hub id or local folder (default: tiny offline model)")
    parser.add_argument("--output_dir", default="dpo-to-dynamicpo")
    parser.add_argument("--max_steps", type=int, default=10)
    args = parser.parse_args()
    model_id = args.model_name_or_path or tiny_model_path()

    # ---- from here on, an ordinary TRL DPO script ----
    model = AutoModelForCausalLM.from_pretrained(model_id)
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = multi_negative_dataset()

    training_args = DPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=8,
        learning_rate=5e-4,
        max_steps=args.max_steps,
        logging_steps=1,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
    )
    trainer = DPOTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    print(f"saved to {training_args.output_dir}")


if __name__ == "__main__":
    main()
