"""Step time and peak memory of DynamicPO's packed (shared-prefix) scoring against naive rows and `trl.DPOTrainer`.

    python benchmarks/step_time.py                      # CPU default: 5.5M-parameter Qwen2, batch 4 (a few minutes)
    python benchmarks/step_time.py --quick              # smoke run
    python benchmarks/step_time.py --device cuda --dtype bf16 --model-shape qwen2.5-0.5b --json out.json

What is measured
----------------
Every configuration gets its own trainer and its own copy of the policy (same initial weights; one frozen reference
model is shared, it is never updated). One step is `trainer.training_step(model, batch)` (forward of policy and
reference, loss, backward) plus the optimizer step and `zero_grad(set_to_none=True)`, on a batch pre-collated by the
trainer's own collator from the trainer's own prepared dataset: the same B LastFM prompts for every configuration
(`trl.DPOTrainer` gets the chosen answer and the first negative). Repetitions are interleaved: each round runs one
step of every configuration, in a fresh random order, and the first `--warmup` rounds are discarded. Reported:
median step time per configuration, and each ratio as the median over rounds of the per-round ratio (paired
measurements taken seconds apart, which cancels the slow drift of a noisy machine). Clock: on CPU, by default, one
torch thread and the CPU time of the process (`time.process_time`): on a shared machine a multi-threaded op waits at
every barrier for a descheduled thread (a 32-element op measured 20 ms with 2 threads under load, 6 us with one), and
CPU time does not count the time other processes hold the core. `--threads 2 --clock wall` on a quiet machine.
On CUDA: wall time with `torch.cuda.synchronize()` around each step.

Memory, after the timing rounds, two more steps per configuration (the smaller peak is kept):
* CUDA: `torch.cuda.max_memory_allocated()` during the step minus `memory_allocated()` before it ("step peak":
  activations, gradients, temporaries), plus the configuration's resident state (its policy weights, optimizer
  state and the reference weights) for the absolute peak a process running only that configuration would reach.
* CPU: the resident-set high-water mark during the step (`VmHWM` after resetting it through
  `/proc/self/clear_refs`) minus the RSS before it, with glibc's mmap threshold fixed at 64 KiB and the heap trimmed
  before each step, so that freed tensors go back to the OS and the high-water mark tracks live tensor memory
  (torch's CPU allocator does not cache). Absolute peak = that + the resident state, as on CUDA.
The memory ratio target is checked on the step peak (what differs between configurations).

The loss micro-benchmark times `multi_negative_loss` (forward + backward) at B=32, K=19 against a per-example
Python loop of the same maths, written like the public DynamicPO code (`.item()` per negative, host-side selection,
exact 1-D 3-means by enumerating the cut points instead of scikit-learn), and checks that both agree.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_common import (  # noqa: E402
    MODEL_SHAPES,
    build_model,
    build_tokenizer_for,
    count_parameters,
    data_path,
    load_rows,
    preference_examples,
)


KS = (1, 3, 7, 15)
TARGETS = {
    "packed_k15_over_trl_dpo_k1": ("<=", 1.0),
    "naive_k15_over_packed_k15": (">=", 5.0),
    "dynamicpo_over_plain_dmpo_packed_k15": ("<=", 1.02),
    "peak_memory_packed_k15_over_trl_dpo_k1": ("<=", 1.3),
    "loss_loop_over_vectorised": (">=", 100.0),
}


# ------------------------------------------------------------------------------------------------- configurations


def configurations(quick: bool) -> list[dict]:
    ks = (1, 15) if quick else KS
    configs = [{"name": "trl.DPOTrainer K=1", "kind": "trl", "k": 1}]
    configs += [{"name": f"naive K={k}", "kind": "dynamicpo", "k": k, "shared_prefix": False} for k in ks]
    configs += [{"name": f"packed K={k}", "kind": "dynamicpo", "k": k, "shared_prefix": True} for k in ks]
    configs.append(
        {"name": "packed plain DMPO K=15", "kind": "dynamicpo", "k": 15, "shared_prefix": True,
         "boundary_selection": False, "dynamic_beta": False}
    )
    return configs


def build_trainer(config: dict, model, ref_model, tokenizer, examples: list[dict], args: argparse.Namespace, out_dir):
    """A trainer for one configuration, its optimizer, and one pre-collated batch."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    common = {
        "output_dir": out_dir,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": 1e-6,
        "bf16": False,  # the model itself is built in --dtype; no autocast on top
        "gradient_checkpointing": False,
        "report_to": [],
        "use_cpu": args.device == "cpu",
        "logging_strategy": "no",
        "save_strategy": "no",
        "max_length": None,
        "beta": 1.0,
        "seed": 0,
    }
    if config["kind"] == "trl":
        rows = [{**ex, "rejected": ex["rejected"][0]} for ex in examples]
        trainer = DPOTrainer(
            model=model, ref_model=ref_model, args=DPOConfig(**common), train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    else:
        rows = [{**ex, "rejected": ex["rejected"][: config["k"]]} for ex in examples]
        extra = {key: config[key] for key in ("shared_prefix", "boundary_selection", "dynamic_beta") if key in config}
        trainer = DynamicPOTrainer(
            model=model, ref_model=ref_model, args=DynamicPOConfig(**common, **extra),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, read by `training_step`
    trainer._set_signature_columns_if_needed()
    dataset = trainer.train_dataset
    keep = [c for c in dataset.column_names if c in trainer._signature_columns]
    batch = trainer.data_collator([{c: dataset[i][c] for c in keep} for i in range(len(dataset))])
    return trainer, batch


def batch_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    if "segment_ids" in batch:
        return int((batch["segment_ids"] >= 0).sum())
    return int(batch["input_ids"].numel())


def train_step(trainer, batch) -> None:
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    # Both trainers keep per-step metric tensors until the next `log`; drop them so nothing accumulates.
    for store in (getattr(trainer, "_step_metrics", {}), trainer._metrics):
        for values in store.values():
            values.clear()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------------- memory


class CpuMemory:
    """Resident-set high-water mark of this process around one call (Linux only)."""

    M_MMAP_THRESHOLD = -3

    def __init__(self):
        self.libc = ctypes.CDLL("libc.so.6")
        # A fixed threshold (which also disables glibc's dynamic one): freed tensors are unmapped at once.
        self.libc.mallopt(self.M_MMAP_THRESHOLD, 64 * 1024)
        with open("/proc/self/clear_refs", "w") as handle:  # fails early where unsupported
            handle.write("5")

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"{key} not in /proc/self/status")

    def peak_during(self, fn) -> int:
        gc.collect()
        self.libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        before = self._status("VmRSS")
        fn()
        return self._status("VmHWM") - before


def cuda_peak_during(fn) -> int:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def resident_bytes(trainer, ref_model) -> int:
    """Policy weights, optimizer state and reference weights: what a step starts from (gradients are freed)."""
    total = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    total += sum(p.numel() * p.element_size() for p in ref_model.parameters())
    for state in trainer.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


# ------------------------------------------------------------------------------------------- loss micro-benchmark


def exact_top_cluster(values: list[float]) -> list[int]:
    """Indices of the highest-mean group of the exact 1-D k-means (k = min(3, distinct values)), by enumeration."""
    order = sorted(range(len(values)), key=lambda i: values[i])  # stable
    xs = [values[i] for i in order]
    n = len(xs)
    k = min(3, len(set(xs)))
    if k == 1:
        return list(range(n))

    def sse(group):
        mean = sum(group) / len(group)
        return sum((x - mean) ** 2 for x in group)

    best, best_start = math.inf, n
    if k == 2:
        for i in range(1, n):
            err = sse(xs[:i]) + sse(xs[i:])
            if err < best:
                best, best_start = err, i
    else:
        for i in range(1, n - 1):
            for j in range(i + 1, n):
                err = sse(xs[:i]) + sse(xs[i:j]) + sse(xs[j:])
                if err < best:
                    best, best_start = err, j
    return sorted(order[best_start:])


def loop_dynamicpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=1.0, margin=6.0, scale=0.5):
    """DMPO + boundary selection + dual-margin beta, one example and one negative at a time (authors' style)."""
    losses = []
    for i in range(chosen.size(0)):
        p_pos = chosen[i].item()
        p_neg = [rejected[i, j].item() for j in range(rejected.size(1))]
        boundary = [j for j, p in enumerate(p_neg) if p >= p_pos]
        if not boundary:
            boundary = exact_top_cluster(p_neg)
        easy = [j for j in range(len(p_neg)) if j not in boundary] or boundary
        easy_mean = sum(p_neg[j] for j in easy) / len(easy)
        terms = []
        for j in boundary:
            d_pb = p_pos - p_neg[j]
            d_be = p_neg[j] - easy_mean
            beta_j = beta * (1 + math.tanh((d_pb - d_be - margin) / (abs(d_pb) + abs(d_be) + 1e-8)) * scale)
            terms.append(beta_j * ((chosen[i] - ref_chosen[i]) - (rejected[i, j] - ref_rejected[i, j])))
        losses.append(-F.logsigmoid(torch.stack(terms).mean()))
    return torch.stack(losses)


def loss_inputs(batch: int, k: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    chosen = -(torch.rand(batch, generator=g) * 6 + 4)
    rejected = chosen[:, None] - 0.5 - torch.rand(batch, k, generator=g) * 6  # all below: the clustering path
    above = torch.rand(batch, k, generator=g) < 0.15
    above[1::2] = False  # every other row keeps the clustering path; the others get about 15% boundary negatives
    rejected = torch.where(above, chosen[:, None] + torch.rand(batch, k, generator=g), rejected)
    ref_chosen = chosen + torch.randn(batch, generator=g) * 0.3
    ref_rejected = rejected + torch.randn(batch, k, generator=g) * 0.3
    return [t.to(device) for t in (chosen, rejected, ref_chosen, ref_rejected)]


def bench_loss(device: str, reps: int, clock, batch: int = 32, k: int = 19) -> dict:
    from trl_dynamicpo.losses import multi_negative_loss

    chosen, rejected, ref_chosen, ref_rejected = loss_inputs(batch, k, device)

    def fresh():
        return chosen.clone().requires_grad_(), rejected.clone().requires_grad_()

    def run_fast():
        c, r = fresh()
        losses, _ = multi_negative_loss(c, r, ref_chosen, ref_rejected, beta=1.0)  # the loop's (the paper's) beta
        losses.mean().backward()
        return losses, c.grad, r.grad

    def run_loop():
        c, r = fresh()
        losses = loop_dynamicpo_loss(c, r, ref_chosen, ref_rejected)
        losses.mean().backward()
        return losses, c.grad, r.grad

    fast_out, loop_out = run_fast(), run_loop()
    max_diff = max(float((a - b).detach().abs().max()) for a, b in zip(fast_out, loop_out))
    with torch.no_grad():
        clustering = float((~(rejected >= chosen[:, None]).any(dim=1)).float().mean())

    def timed(fn, n):
        samples = []
        for _ in range(n):
            synchronize(device)
            start = clock()
            fn()
            synchronize(device)
            samples.append(clock() - start)
        return statistics.median(samples)

    for _ in range(3):  # warm up both
        run_fast()
        run_loop()
    fast_s = timed(run_fast, reps * 10)
    loop_s = timed(run_loop, reps)
    return {
        "batch": batch,
        "k": k,
        "clustering_fraction": clustering,
        "vectorised_ms": fast_s * 1e3,
        "loop_ms": loop_s * 1e3,
        "speedup": loop_s / fast_s,
        "max_abs_diff_loss_and_grads": max_diff,
    }


# ------------------------------------------------------------------------------------------------------- the run


def bench_loss_switches(device: str, reps: int, clock, batch: int, k: int = 15) -> dict:
    """`multi_negative_loss` forward + backward with DynamicPO's switches on and off, at the step's B and K.

    The loss call is the only code that differs between a DynamicPO step and a plain DMPO step, so
    1 + (difference / plain DMPO step time) is the step-time ratio without the noise of whole steps.
    """
    from trl_dynamicpo.losses import multi_negative_loss

    chosen, rejected, ref_chosen, ref_rejected = loss_inputs(batch, k, device, seed=1)
    settings = {"dynamicpo": {}, "plain": {"boundary_selection": False, "dynamic_beta": False}}
    samples = {name: [] for name in settings}
    for i in range(3 + reps):
        for name, kwargs in settings.items():
            c, r = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
            synchronize(device)
            start = clock()
            losses, _ = multi_negative_loss(c, r, ref_chosen, ref_rejected, beta=1.0, **kwargs)
            losses.mean().backward()
            synchronize(device)
            if i >= 3:
                samples[name].append(clock() - start)
    return {f"{name}_ms": statistics.median(ts) * 1e3 for name, ts in samples.items()}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--model-shape", default="small", choices=sorted(MODEL_SHAPES))
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads (CPU default 1: on a shared machine, multi-threaded ops wait for descheduled "
        "threads at every barrier, which swamps the measurement)",
    )
    parser.add_argument(
        "--clock", default=None, choices=("wall", "cpu"),
        help="wall: time.perf_counter; cpu: CPU seconds of this process (time.process_time), which a loaded machine "
        "does not inflate. Default: cpu on CPU, wall on CUDA (always wall there).",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help="prompts per step (default 4; 8 on a GPU with at least 100 GiB)",
    )
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (each runs every configuration once)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded rounds")
    parser.add_argument("--loss-reps", type=int, default=20, help="timed calls of the loop loss (x10 vectorised)")
    parser.add_argument("--quick", action="store_true", help="smoke run: K in {1, 15}, tiny model, 2 rounds")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--json", default=None, help="write all numbers to this file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.model_shape = "test" if args.model_shape == "small" else args.model_shape
        args.reps, args.warmup, args.loss_reps = 2, 1, 3
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    if args.device == "cuda":
        args.clock = "wall"
    elif args.clock is None:
        args.clock = "cpu"
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.batch_size is None:
        # Every configuration keeps its own policy and AdamW state resident (3x the weights), and naive K=15 holds
        # activations for 16 rows per prompt: at Qwen2.5-0.5B size batch 8 needs about 65 GB, batch 4 about 47 GB.
        big_gpu = args.device == "cuda" and torch.cuda.get_device_properties(0).total_memory >= 100 * 2**30
        args.batch_size = 8 if big_gpu else 4
    return args


def quiet() -> None:
    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    except ImportError:
        pass


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    return platform.machine()


def ratio_check(name: str, value: float) -> tuple[str, bool]:
    op, target = TARGETS[name]
    ok = value <= target if op == "<=" else value >= target
    return f"target {op} {target:g}: {'MET' if ok else 'MISSED'}", ok


def main(argv=None) -> dict:
    args = parse_args(argv)
    quiet()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    device = args.device

    rows = load_rows(max(2000, args.batch_size), seed=args.seed)
    tokenizer = build_tokenizer_for(rows)
    bench_rows = rows[: args.batch_size]
    examples = preference_examples(bench_rows, num_negatives=max(KS))
    prompt_lens = [len(tokenizer(ex["prompt"])["input_ids"]) for ex in preference_examples(rows[:500], 1)]
    answer_lens = [len(tokenizer(c)["input_ids"]) for ex in preference_examples(rows[:500], 19) for c in ex["rejected"]]

    base = build_model(
        tokenizer, args.model_shape, attn_implementation=args.attn, dtype=dtype, device=device, seed=args.seed
    )
    ref_model = copy.deepcopy(base).eval().requires_grad_(False)
    n_params = count_parameters(base)

    print(f"# DynamicPO step-time benchmark ({cpu_name() if device == 'cpu' else torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.clock} clock)")
    print(f"data: {data_path()}  tokenizer: BPE {len(tokenizer)} tokens")
    print(f"mean prompt length {statistics.mean(prompt_lens):.1f} tokens (max {max(prompt_lens)}), "
          f"mean answer length {statistics.mean(answer_lens):.2f} tokens + EOS")
    print(f"model: Qwen2 '{args.model_shape}' {n_params / 1e6:.1f}M parameters, {args.dtype}, {args.attn}, "
          f"device {device}; batch {args.batch_size} prompts; {args.warmup} warm-up + {args.reps} timed rounds")
    if device == "cuda":
        print(f"gpu: {torch.cuda.get_device_name()}")

    configs = configurations(args.quick)
    with tempfile.TemporaryDirectory() as out_dir:
        setups = []
        for config in configs:
            model = copy.deepcopy(base)
            trainer, batch = build_trainer(config, model, ref_model, tokenizer, examples, args, out_dir)
            setups.append((config, trainer, batch))
        del base

        times = {c["name"]: [] for c in configs}
        order = list(range(len(setups)))
        rng = random.Random(args.seed)
        start_all = time.perf_counter()
        for round_index in range(args.warmup + args.reps):
            rng.shuffle(order)
            for i in order:
                config, trainer, batch = setups[i]
                synchronize(device)
                start = clock()
                train_step(trainer, batch)
                synchronize(device)
                if round_index >= args.warmup:
                    times[config["name"]].append(clock() - start)
            print(f"  round {round_index + 1}/{args.warmup + args.reps} done "
                  f"({time.perf_counter() - start_all:.0f} s)", flush=True)

        memory = {}
        if not args.no_memory:
            measure = cuda_peak_during if device == "cuda" else CpuMemory().peak_during
            peaks = {config["name"]: [] for config in configs}
            for _ in range(2):  # two passes; the smaller peak is kept (allocator noise only ever adds)
                for config, trainer, batch in setups:
                    peaks[config["name"]].append(measure(lambda t=trainer, b=batch: train_step(t, b)))
            for config, trainer, _ in setups:
                step_peak = min(peaks[config["name"]])
                memory[config["name"]] = {
                    "step_peak_mb": step_peak / 2**20,
                    "absolute_peak_mb": (step_peak + resident_bytes(trainer, ref_model)) / 2**20,
                }
        tokens = {config["name"]: batch_tokens(batch) for config, _, batch in setups}
        rows_per_batch = {config["name"]: int(batch["input_ids"].shape[0]) for config, _, batch in setups}
        lengths = {config["name"]: int(batch["input_ids"].shape[1]) for config, _, batch in setups}
        del setups
        gc.collect()

    loss = bench_loss(device, args.loss_reps, clock)
    switches = bench_loss_switches(device, args.loss_reps * 10, clock, args.batch_size)

    spreads = {}

    def paired(a: str, b: str) -> float:
        per_round = [x / y for x, y in zip(times[a], times[b])]
        spreads[a, b] = (min(per_round), max(per_round))
        return statistics.median(per_round)

    ratios, spread_of = {}, {}
    if "packed K=15" in times:
        ratios["packed_k15_over_trl_dpo_k1"] = paired("packed K=15", "trl.DPOTrainer K=1")
        ratios["naive_k15_over_packed_k15"] = paired("naive K=15", "packed K=15")
        ratios["dynamicpo_over_plain_dmpo_packed_k15"] = paired("packed K=15", "packed plain DMPO K=15")
        spread_of = dict(zip(ratios, spreads.values()))
        if memory:
            ratios["peak_memory_packed_k15_over_trl_dpo_k1"] = (
                memory["packed K=15"]["step_peak_mb"] / memory["trl.DPOTrainer K=1"]["step_peak_mb"]
            )
    ratios["loss_loop_over_vectorised"] = loss["speedup"]

    # ------------------------------------------------------------------------------------------------ report
    header = "| configuration | rows x length | tokens | median step (ms) | min-max (ms) |"
    header += " step peak mem (MB) | abs. peak mem (MB) |" if memory else ""
    print()
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for config in configs:
        name = config["name"]
        ts = [t * 1e3 for t in times[name]]
        line = (f"| {name} | {rows_per_batch[name]} x {lengths[name]} | {tokens[name]} | {statistics.median(ts):.1f} "
                f"| {min(ts):.0f}-{max(ts):.0f} |")
        if memory:
            line += f" {memory[name]['step_peak_mb']:.1f} | {memory[name]['absolute_peak_mb']:.1f} |"
        print(line)
    if memory and device == "cuda":
        print("(memory: torch.cuda.max_memory_allocated during one step minus memory_allocated before it; absolute = "
              "that + policy weights, optimizer state and reference weights)")
    elif memory:
        print("(memory: RSS high-water mark during one step minus RSS before it, mmap threshold 64 KiB; absolute = "
              "that + policy weights, optimizer state and reference weights)")
    print()
    print(f"multi_negative_loss, B={loss['batch']}, K={loss['k']} (forward + backward; {loss['clustering_fraction']:.0%}"
          f" of rows take the clustering path): vectorised {loss['vectorised_ms']:.2f} ms, per-example loop "
          f"{loss['loop_ms']:.1f} ms, speedup {loss['speedup']:.0f}x (max |difference| of loss and grads "
          f"{loss['max_abs_diff_loss_and_grads']:.1e})")
    if "packed plain DMPO K=15" in times:
        plain_step_ms = statistics.median(times["packed plain DMPO K=15"]) * 1e3
        switches["estimated_step_ratio"] = 1 + (switches["dynamicpo_ms"] - switches["plain_ms"]) / plain_step_ms
        print(f"multi_negative_loss, B={args.batch_size}, K=15 (forward + backward): DynamicPO "
              f"{switches['dynamicpo_ms']:.2f} ms, plain DMPO {switches['plain_ms']:.2f} ms, i.e. "
              f"{(switches['dynamicpo_ms'] - switches['plain_ms']) / plain_step_ms:+.2%} of the plain DMPO step "
              f"(estimated DynamicPO / plain DMPO step ratio {switches['estimated_step_ratio']:.4f})")
    print()
    results = {}
    descriptions = {
        "packed_k15_over_trl_dpo_k1": "packed K=15 step / trl.DPOTrainer K=1 step",
        "naive_k15_over_packed_k15": "naive K=15 step / packed K=15 step",
        "dynamicpo_over_plain_dmpo_packed_k15": "DynamicPO / plain DMPO step (packed K=15)",
        "peak_memory_packed_k15_over_trl_dpo_k1": "step peak memory packed K=15 / trl.DPOTrainer K=1",
        "loss_loop_over_vectorised": "loss: per-example loop / vectorised",
    }
    for key, value in ratios.items():
        verdict, ok = ratio_check(key, value)
        results[key] = {"value": value, "target": f"{TARGETS[key][0]} {TARGETS[key][1]:g}", "met": ok}
        spread = ""
        if key in spread_of:
            results[key]["per_round_min_max"] = spread_of[key]
            spread = f"  (per round {spread_of[key][0]:.3f}-{spread_of[key][1]:.3f})"
        print(f"{descriptions[key]:<55} {value:8.3f}   {verdict}{spread}")

    report = {
        "args": vars(args),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameters": n_params,
        "mean_prompt_tokens": statistics.mean(prompt_lens),
        "mean_answer_tokens": statistics.mean(answer_lens),
        "step_times_s": times,
        "median_step_ms": {name: statistics.median(ts) * 1e3 for name, ts in times.items()},
        "tokens": tokens,
        "memory": memory,
        "loss": loss,
        "loss_switches": switches,
        "ratios": results,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"\nwrote {args.json}")
    return report


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
