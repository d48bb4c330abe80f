"""Every accelerate config of recipes/accelerate/ launched on CPU processes, as a user launches it.

The configs that can run on CPU (gloo) train as one process does with the same global batch: the same per-step
losses and gathered metrics and the same weights. `single_gpu`, `multi_gpu` (DDP) and `multi_node` (two "machines"
on this one, one process each) run as written; DeepSpeed ZeRO-2 / ZeRO-3 run on DeepSpeed's CPU accelerator when
`deepspeed` is installed (it is in the test extra). The only overrides are the process count and `--mixed_precision
no` (the configs say bf16, for GPUs; the reference runs in float32).

FSDP2 cannot run on CPU: accelerate turns an FSDP config on only for GPUs and other accelerators, and on CPU
processes would train unsharded data-parallel. The test checks that the config parses into an FSDP2 plugin, that
the launch builds the processes and the trainer, and that `trl-dynamicpo` then stops with an error saying that a GPU
is needed (instead of training something else than the recipe says).
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


pytestmark = pytest.mark.slow  # accelerate launches


REPO = Path(__file__).resolve().parents[1]
ACCELERATE = REPO / "recipes" / "accelerate"
STEPS = 3
GLOBAL_BATCH = 4


def _recipe(data, output_dir) -> dict:
    return {
        **data,
        "output_dir": str(output_dir),
        "max_train_samples": GLOBAL_BATCH * STEPS,
        "num_negatives": 4,
        "per_device_train_batch_size": GLOBAL_BATCH,
        "max_steps": STEPS,
        "learning_rate": 2e-3,
        "lr_scheduler_type": "constant",
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
    }


def _env() -> dict:
    # CPU processes whatever the machine has; one thread each (2 processes share the cores).
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip


def _launch_command(config: str, processes: int, *launch_args: str, train_args=()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / f"{config}.yaml"),
            "--num_processes", str(processes), "--mixed_precision", "no", *launch_args,
            "-m", "trl_dynamicpo", "train", *train_args]  # fmt: skip


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def _launch(config: str, processes: int, train_args, *launch_args: str) -> subprocess.CompletedProcess:
    command = _launch_command(config, processes, *launch_args, train_args=train_args)
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=900, cwd=REPO)


def _history(output_dir: Path) -> list[dict]:
    rows = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [row for row in rows if "loss" in row]


def _weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "model.safetensors"))


def _parallelism(output_dir: Path) -> dict:
    return json.loads((output_dir / "trl_dynamicpo_run.json").read_text())["parallelism"]


@pytest.fixture(scope="module")
def setup(slice_data, tmp_path_factory):
    """The recipe, and the single-process run (in this process) every launch is compared with."""
    from trl_dynamicpo.cli.main import main

    root = tmp_path_factory.mktemp("accelerate-recipes")
    config = root / "recipe.yaml"
    config.write_text(yaml.safe_dump(_recipe(slice_data, root / "one")), encoding="utf-8")
    assert main(["train", "--config", str(config)]) == 0
    return config, root / "one", Path(slice_data["model_name_or_path"])


def _assert_same_run(reference: Path, other: Path, base: Path) -> None:
    h1, h2 = _history(reference), _history(other)
    assert [r["step"] for r in h1] == [r["step"] for r in h2] == list(range(1, STEPS + 1))
    for a, b in zip(h1, h2):
        for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "dynamicpo/boundary_negatives",
                    "dynamicpo/clustering_fallback"):  # fmt: skip
            assert b[key] == pytest.approx(a[key], abs=1e-4, rel=1e-4), (key, a["step"])
    w1, w2, w0 = _weights(reference), _weights(other), _weights(base)
    # DeepSpeed ZeRO-2 also writes the tied output layer (a copy of the embeddings) that the others leave out.
    assert w1.keys() <= w2.keys() and w2.keys() - w1.keys() <= {"lm_head.weight"}
    if "lm_head.weight" not in w1 and "lm_head.weight" in w2:
        assert (w2["lm_head.weight"] == w2["model.embed_tokens.weight"]).all()
    for name in w1:
        assert (w1[name] - w2[name].float()).abs().max().item() < 1e-4, name
    changed = sum(int((w1[name] - w0[name]).abs().max().item() > 1e-3) for name in w1)
    assert changed > len(w1) // 2, "training barely changed the weights; the comparison would prove nothing"


def _needs_deepspeed():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (`pip install -e '.[test]'` installs it): the ZeRO recipes cannot run")


@pytest.mark.parametrize(
    "config, processes, distributed_type, extra",
    [
        ("single_gpu", 1, "NO", {}),
        ("multi_gpu", 2, "MULTI_CPU", {}),
        ("deepspeed_zero2", 2, "DEEPSPEED", {"zero_stage": 2}),
        ("deepspeed_zero3", 2, "DEEPSPEED", {"zero_stage": 3}),
    ],
)
def test_recipe_runs_on_cpu_like_one_process(setup, tmp_path, config, processes, distributed_type, extra):
    if config.startswith("deepspeed"):
        _needs_deepspeed()
    recipe, reference, base = setup
    out = tmp_path / config
    per_device = GLOBAL_BATCH // processes
    _check(_launch(config, processes, ["--config", str(recipe), "--output_dir", str(out),
                                       "--per_device_train_batch_size", str(per_device)]))  # fmt: skip
    assert _parallelism(out) == {"distributed_type": distributed_type, "num_processes": processes, "device": "cpu",
                                 **extra}  # fmt: skip
    _assert_same_run(reference, out, base)


def test_multi_node_recipe_on_two_local_machines(setup, tmp_path):
    """multi_node.yaml as written (static rendezvous, 2 machines), both machines on this host, 1 process each."""
    recipe, reference, base = setup
    out = tmp_path / "multi_node"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    train_args = ["--config", str(recipe), "--output_dir", str(out), "--per_device_train_batch_size", "2"]
    machines = [
        subprocess.Popen(
            _launch_command("multi_node", 2, "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                            "--main_process_port", str(port), train_args=train_args),  # fmt: skip
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO,
        )
        for rank in (0, 1)
    ]
    for machine in machines:
        stdout, stderr = machine.communicate(timeout=900)
        _check(subprocess.CompletedProcess(machine.args, machine.returncode, stdout, stderr))
    assert _parallelism(out) == {"distributed_type": "MULTI_CPU", "num_processes": 2, "device": "cpu"}
    _assert_same_run(reference, out, base)


def test_fsdp2_recipe_reaches_the_gpu_requirement(setup, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE / "fsdp2.yaml"))
    assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    recipe, _, _ = setup
    out = tmp_path / "fsdp2"
    result = _launch("fsdp2", 2, ["--config", str(recipe), "--output_dir", str(out), "--per_device_train_batch_size", "2"])
    assert result.returncode != 0
    assert "The launcher asked for FSDP (version 2), but accelerate" in result.stderr
    assert "set up MULTI_CPU on cpu" in result.stderr and "FSDP only on GPUs" in result.stderr
    assert not (out / "model.safetensors").exists()
