"""Run under `torchrun` by tests/test_recsys_evaluation.py: the library evaluations on every process of a gloo group.

Each process writes `rank-<r>.json` to OUT_DIR: the metrics it returned and which prompts it built (one prompt is
built per scored or generated prompt, so these are the prompts this process evaluated), for the ranking and
generation protocols and for `RecEvalCallback.evaluate`, plus how many times it computed the baselines. Last, the
ranking again with the group marked as FSDP (whose forward passes are collective: every process must run as many).

    torchrun --nproc_per_node 2 tests/distributed_eval_worker.py MODEL_DIR OUT_DIR NUM_PROMPTS
"""

import json
import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import DistributedType
from transformers import AutoModelForCausalLM, AutoTokenizer

import trl_dynamicpo.recsys.evaluation as evaluation
from trl_dynamicpo.recsys import PromptBuilder, RecEvalCallback, evaluate_generation, evaluate_ranking, load_sample


class RecordingBuilder(PromptBuilder):
    """A `PromptBuilder` that records the row index of every prompt it builds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.built: list[int] = []

    def build(self, example, index):
        self.built.append(index)
        return super().build(example, index)

    def take(self) -> list[int]:
        built, self.built = self.built, []
        return built


def main(model_dir: str, out_dir: str, count: int) -> None:
    state = PartialState(cpu=True)  # the gloo group torchrun describes
    out = Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples, train = load_sample("val")[:count], load_sample("train")[:300]
    baseline_calls = []
    compute_baselines = evaluation.baseline_scores
    evaluation.baseline_scores = lambda *args, **kwargs: baseline_calls.append(1) or compute_baselines(*args, **kwargs)

    builder = RecordingBuilder("music")
    ranking = evaluate_ranking(model, tokenizer, examples, builder, batch_size=2, output_dir=out / "ranking",
                               show_progress=False, train_examples=train)  # fmt: skip
    ranked = builder.take()
    generation = evaluate_generation(model, tokenizer, examples, builder, batch_size=2, max_new_tokens=4,
                                     output_dir=out / "generation", show_progress=False)  # fmt: skip
    generated = builder.take()
    callback = RecEvalCallback(examples, builder, tokenizer, batch_size=2).evaluate(model, None)
    callback_built = builder.take()
    kind, state.distributed_type = state.distributed_type, DistributedType.FSDP
    sharded_weights = evaluate_ranking(model, tokenizer, examples, builder, batch_size=2, show_progress=False)
    state.distributed_type = kind
    record = {
        "ranking": ranking, "ranked": ranked, "generation": generation, "generated": generated,
        "callback": callback, "callback_built": callback_built, "baseline_calls": len(baseline_calls),
        "sharded_weights": sharded_weights, "sharded_weights_built": builder.take(),
    }  # fmt: skip
    (out / f"rank-{state.process_index}.json").write_text(json.dumps(record), encoding="utf-8")
    state.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
