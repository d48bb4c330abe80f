"""Dataset preparation runs on the main process first under a distributed launch, as TRL's does.

Two CPU processes (`torchrun --nproc_per_node 2`, gloo) prepare the same on-disk dataset: the main process
tokenizes it and writes the `datasets` cache, the other waits and reads that cache instead of tokenizing again.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import preference_rows


pytestmark = pytest.mark.slow  # several processes


REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, logging, os, sys

    import datasets
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from trl_dynamicpo import DynamicPOConfig
    from trl_dynamicpo.preprocessing import prepare_preference_dataset

    root = sys.argv[1]
    messages = []

    class Record(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    datasets.logging.set_verbosity_info()
    datasets.logging.get_logger().addHandler(Record())
    args = DynamicPOConfig(os.path.join(root, "out"), use_cpu=True, bf16=False, report_to=[])
    dataset = load_from_disk(os.path.join(root, "data"))
    prepared = prepare_preference_dataset(dataset, AutoTokenizer.from_pretrained(os.path.join(root, "tok")), args)
    rank = int(os.environ["RANK"])
    cached = any("Loading cached processed dataset" in m for m in messages)
    with open(os.path.join(root, f"rank{rank}.json"), "w") as handle:
        json.dump({"cached": cached, "rows": len(prepared)}, handle)
    """
)


def test_preparation_runs_on_the_main_process_first(tokenizer, tmp_path):
    from datasets import Dataset

    rows = preference_rows(12) * 250  # long enough that a second process started at once could not find a cache
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "data"))
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "prepare.py").write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "prepare.py"), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == {"cached": False, "rows": len(rows)}
    assert ranks[1] == {"cached": True, "rows": len(rows)}
