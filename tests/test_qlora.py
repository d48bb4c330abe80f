"""4-bit QLoRA through the CLI on CPU: sft (NF4 base + LoRA) -> train (continues the SFT adapter, SFT model as the
reference) -> eval, and the non-quantized LoRA handoff that merges the adapter instead."""

import json
from pathlib import Path

import pytest
import yaml


def _four_bit_unavailable() -> str | None:
    """Why 4-bit bitsandbytes cannot run here, or None when a quantize/dequantize round trip works on the CPU."""
    try:
        import bitsandbytes.functional as bnbf
        import torch
    except ImportError as err:
        return f"bitsandbytes is not installed ({err})"
    try:
        weight = torch.randn(64, 64)
        packed, state = bnbf.quantize_4bit(weight, quant_type="nf4")
        restored = bnbf.dequantize_4bit(packed, state)
    except (RuntimeError, NotImplementedError, AttributeError, ValueError) as err:
        return f"bitsandbytes {getattr(bnbf, '__version__', '')} has no CPU 4-bit kernel here: {err}"
    if (restored - weight).abs().mean() > 0.2:
        return "bitsandbytes' CPU NF4 round trip is inaccurate"
    return None


def _recipe(data, out: Path, **extra) -> dict:
    return {
        **data,
        "dtype": "float32",
        "use_peft": True,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_modules": ["all-linear"],
        "max_train_samples": 8,
        "max_eval_samples": 4,
        "num_negatives": 3,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "gradient_checkpointing": False,
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "sft": {"output_dir": str(out / "sft"), "learning_rate": 1e-2},
        "train": {"model_name_or_path": str(out / "sft"), "output_dir": str(out / "dpo"), "learning_rate": 1e-3},
        "eval": {"model_name_or_path": str(out / "dpo"), "batch_size": 4, "baselines": False},
        **extra,
    }


def _losses(output_dir: Path) -> list[float]:
    rows = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [row["loss"] for row in rows if "loss" in row]


def _pipeline(config: Path) -> dict:
    from trl_dynamicpo.cli.main import main

    assert main(["sft", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config)]) == 0
    assert main(["eval", "--config", str(config)]) == 0
    return yaml.safe_load(config.read_text())


def test_qlora_sft_train_eval(slice_data, tmp_path):
    reason = _four_bit_unavailable()
    if reason:
        pytest.skip(reason)
    config = tmp_path / "qlora.yaml"
    config.write_text(yaml.safe_dump(_recipe(slice_data, tmp_path, load_in_4bit=True, bnb_4bit_quant_type="nf4")))
    _pipeline(config)

    sft_dir, dpo_dir = tmp_path / "sft", tmp_path / "dpo"
    for folder in (sft_dir, dpo_dir):
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert Path(adapter["base_model_name_or_path"]) == Path(slice_data["model_name_or_path"])
        assert (folder / "adapter_model.safetensors").exists() and not (folder / "model.safetensors").exists()
    record = json.loads((dpo_dir / "trl_dynamicpo_run.json").read_text())
    assert "SFT adapter" in record["handoff"] and "'ref' adapter" in record["handoff"]
    assert record["model"]["load_in_4bit"] is True
    # The reference is the SFT model (a frozen copy of the SFT adapter), the policy starts there too: the first
    # step's log-ratios are 0 up to the adapter's bf16 rounding, so the DMPO loss is log 2.
    losses = _losses(dpo_dir)
    assert len(losses) == 2 and losses[0] == pytest.approx(0.6931, abs=2e-2)
    # SFT moved the adapter away from its zero initialisation, so the policy is not the bare base model.
    from safetensors.torch import load_file

    lora_b = [t for name, t in load_file(str(sft_dir / "adapter_model.safetensors")).items() if "lora_B" in name]
    assert lora_b and max(t.abs().max().item() for t in lora_b) > 0
    metrics = json.loads((dpo_dir / "eval" / "metrics.json").read_text())
    assert metrics["ranking"]["n"] == 4 and 0.0 <= metrics["ranking"]["hr@1"] <= 1.0


def test_lora_adapter_merged_for_full_training(slice_data, tmp_path):
    """`use_peft: false` on an SFT adapter (no quantization): merge it and train every weight against a frozen copy."""
    config = tmp_path / "lora.yaml"
    recipe = _recipe(slice_data, tmp_path)
    recipe["train"]["use_peft"] = False
    config.write_text(yaml.safe_dump(recipe))
    _pipeline(config)
    dpo_dir = tmp_path / "dpo"
    assert (dpo_dir / "model.safetensors").exists() and not (dpo_dir / "adapter_config.json").exists()
    record = json.loads((dpo_dir / "trl_dynamicpo_run.json").read_text())
    assert "merged" in record["handoff"]
    assert _losses(dpo_dir)[0] == pytest.approx(0.6931, abs=1e-4)
    assert json.loads((dpo_dir / "eval" / "metrics.json").read_text())["ranking"]["n"] == 4
