"""The Python parts of `benchmarks/gpu_check.sh`, one per invocation so that a crash in one leaves the others.

    python benchmarks/gpu_parts.py env
    python benchmarks/gpu_parts.py agreement [--device cuda] [--model-shape qwen2.5-0.5b]
    python benchmarks/gpu_parts.py qlora [--model-shape qwen2.5-0.5b] [--steps 3]

Each prints its findings and a final `PASS <part>` or `FAIL <part>: <why>` line, and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from bench_common import (  # noqa: E402
    MODEL_SHAPES,
    build_model,
    build_tokenizer_for,
    count_parameters,
    load_rows,
    preference_examples,
)


def finish(part: str, failures: list[str]) -> int:
    if failures:
        print(f"FAIL {part}: " + "; ".join(failures))
        return 1
    print(f"PASS {part}")
    return 0


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")


# ------------------------------------------------------------------------------------------------------------ env


def part_env(args) -> int:
    import importlib

    failures = []
    print(f"python {sys.version.split()[0]}")
    for name in ("torch", "transformers", "accelerate", "peft", "datasets", "pyarrow", "pandas", "trl",
                 "bitsandbytes", "trl_dynamicpo"):
        try:
            module = importlib.import_module(name)
            print(f"  {name:<14} {getattr(module, '__version__', '?'):<12} {getattr(module, '__file__', '')}")
        except Exception as error:  # noqa: BLE001 - report any import problem
            print(f"  {name:<14} MISSING ({type(error).__name__}: {error})")
            failures.append(f"cannot import {name}")
    if torch.cuda.is_available():
        print(f"  cuda {torch.version.cuda}, device {torch.cuda.get_device_name()}, "
              f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, bf16 "
              f"{torch.cuda.is_bf16_supported()}")
    elif args.device == "cuda":
        failures.append("torch.cuda.is_available() is False")
    return finish("env", failures)


# ------------------------------------------------------------------------------------------------------ agreement


def part_agreement(args) -> int:
    """Packed vs naive per-completion log-probs on a random-init model: bf16 against the bf16 noise floor, and fp32."""
    quiet()
    from trl_dynamicpo.packing import DataCollatorForMultiNegative, completion_logps, ensure_fused_lm_head

    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rows = load_rows(2000)
    tokenizer = build_tokenizer_for(rows)
    examples = preference_examples(rows[: args.batch_size], num_negatives=args.k)
    # Vary K across rows (padding negatives) and tokenize with the trainer's convention.
    from trl_dynamicpo.preprocessing import tokenize_completions

    tokenized = []
    for i, ex in enumerate(examples):
        k = max(1, args.k - 4 * i)
        prompt_ids, ids = tokenize_completions(tokenizer, ex["prompt"], [ex["chosen"], *ex["rejected"][:k]], add_eos=True)
        tokenized.append({"prompt_ids": prompt_ids, "chosen_ids": ids[0], "rejected_ids": ids[1:]})
    packed_batch = DataCollatorForMultiNegative(pad_token_id=tokenizer.pad_token_id)(tokenized)
    naive_batch = DataCollatorForMultiNegative(pad_token_id=tokenizer.pad_token_id, shared_prefix=False)(tokenized)
    valid = torch.cat([torch.ones(len(tokenized), 1, dtype=torch.bool), packed_batch["rejected_mask"]], dim=1)
    print(f"batch: {len(tokenized)} prompts, K = {[len(t['rejected_ids']) for t in tokenized]}, packed "
          f"{tuple(packed_batch['input_ids'].shape)} vs naive {tuple(naive_batch['input_ids'].shape)}")

    failures = []
    for attn in args.attn:
        model32 = build_model(tokenizer, args.model_shape, attn_implementation=attn, dtype=torch.float32,
                              device=args.device)
        print(f"model: {args.model_shape}, {count_parameters(model32) / 1e6:.1f}M parameters, attention {attn}")
        model16 = copy.deepcopy(model32).to(torch.bfloat16)
        results = {}
        for name, model in (("fp32", model32), ("bf16", model16)):
            model.eval()
            ensure_fused_lm_head(model)
            with torch.no_grad():
                for layout, batch in (("packed", packed_batch), ("naive", naive_batch)):
                    batch = {k: v.to(args.device) for k, v in batch.items()}
                    results[name, layout] = completion_logps(model, batch).double().cpu()[valid]
        del model32, model16
        if args.device == "cuda":
            torch.cuda.empty_cache()

        def diff(a, b, results=results):
            d = (results[a] - results[b]).abs()
            return float(d.max()), float((d / results[b].abs().clamp(min=1e-6)).max())

        fp32_abs, fp32_rel = diff(("fp32", "packed"), ("fp32", "naive"))
        bf16_abs, bf16_rel = diff(("bf16", "packed"), ("bf16", "naive"))
        floor_abs, floor_rel = diff(("bf16", "naive"), ("fp32", "naive"))
        packed_err_abs, _ = diff(("bf16", "packed"), ("fp32", "naive"))
        scale = float(results["fp32", "naive"].abs().mean())
        print(f"  [{attn}] mean |log-prob| {scale:.2f}")
        print(f"  [{attn}] fp32 packed vs naive: max abs {fp32_abs:.2e}, max rel {fp32_rel:.2e}")
        print(f"  [{attn}] bf16 packed vs naive: max abs {bf16_abs:.2e}, max rel {bf16_rel:.2e}")
        print(f"  [{attn}] bf16 noise floor (bf16 naive vs fp32 naive): max abs {floor_abs:.2e}, max rel {floor_rel:.2e}")
        print(f"  [{attn}] bf16 packed vs fp32 naive: max abs {packed_err_abs:.2e}")
        if not fp32_abs <= args.fp32_tol * max(1.0, scale):
            failures.append(f"{attn}: fp32 packed/naive differ by {fp32_abs:.2e} (> {args.fp32_tol:g} x scale)")
        # Packing must not add error beyond bf16 rounding itself: its distance to the fp32 answer stays within
        # three times the distance of the naive bf16 answer (and a small absolute slack for a zero floor).
        if not packed_err_abs <= 3 * floor_abs + 1e-2:
            failures.append(f"{attn}: bf16 packed error {packed_err_abs:.2e} > 3 x bf16 floor {floor_abs:.2e}")
    return finish("agreement", failures)


# ------------------------------------------------------------------------------------------------------------ qlora


def part_qlora(args) -> int:
    """A few 4-bit QLoRA training steps through DynamicPOTrainer, from a saved random-init checkpoint."""
    quiet()
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    failures = []
    rows = load_rows(2000)
    tokenizer = build_tokenizer_for(rows)
    dataset = Dataset.from_list(preference_examples(rows[: args.batch_size * args.steps], num_negatives=args.k))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "random-init")
        start = time.perf_counter()
        model = build_model(tokenizer, args.model_shape, dtype=torch.bfloat16, device=args.device)
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        del model
        print(f"saved random-init {args.model_shape} checkpoint in {time.perf_counter() - start:.1f} s")

        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        config = DynamicPOConfig(
            output_dir=os.path.join(tmp, "out"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=1e-3,  # large, so that the adapter visibly moves in a few steps
            bf16=args.device == "cuda",
            gradient_checkpointing=args.device == "cuda",
            logging_steps=1,
            report_to=[],
            save_strategy="no",
            use_cpu=args.device == "cpu",
            model_init_kwargs={"dtype": torch.bfloat16, "attn_implementation": "sdpa"},
        )
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = DynamicPOTrainer(
            model=checkpoint,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            quantization_config=quantization,
        )
        model = trainer.model
        n_4bit = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
        trainable = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
        print(f"4-bit linear layers: {n_4bit}; trainable (LoRA) parameters: "
              f"{sum(p.numel() for p in trainable.values()) / 1e6:.2f}M; packed rows: "
              f"{trainer.data_collator.shared_prefix}; reference: adapter off (ref_model is {trainer.ref_model})")
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        output = trainer.train()
        elapsed = time.perf_counter() - start
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        moved = sum(
            not torch.equal(p.detach().float(), trainable[n]) for n, p in model.named_parameters() if n in trainable
        )
        print(f"{args.steps} steps in {elapsed:.1f} s, losses {[round(x, 4) for x in losses]}, "
              f"train_loss {output.training_loss:.4f}; LoRA tensors updated: {moved}/{len(trainable)}")
        if args.device == "cuda":
            print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        metrics = [k for k in trainer.state.log_history[0] if k.startswith("dynamicpo/")]
        print(f"logged DynamicPO metrics: {metrics}")
        if n_4bit == 0:
            failures.append("no Linear4bit layer: the model was not quantized")
        if not trainer.data_collator.shared_prefix:
            failures.append("the trainer fell back to naive rows")
        if not losses or not all(math.isfinite(x) for x in losses):
            failures.append(f"non-finite or missing losses {losses}")
        if moved == 0:
            failures.append("no LoRA parameter changed")
        if not metrics:
            failures.append("no dynamicpo/* metric logged")
    return finish("qlora", failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("env", "agreement", "qlora"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-shape", default="qwen2.5-0.5b", choices=sorted(MODEL_SHAPES))
    parser.add_argument("--attn", nargs="+", default=["sdpa", "eager"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--k", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fp32-tol", type=float, default=1e-4, help="fp32 packed/naive tolerance, x mean |log-prob|")
    args = parser.parse_args()
    return {"env": part_env, "agreement": part_agreement, "qlora": part_qlora}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
