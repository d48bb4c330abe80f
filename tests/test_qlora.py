"""4-bit QLoRA through the CLI on CPU: sft (NF4 base + LoRA) -> train (continues the SFT adapter, SFT model as the
reference) -> eval, and the non-quantized LoRA handoff that merges the adapter instead.

bitsandbytes (0.50) has two CPU paths for a 4-bit linear layer: training (and any CPU without AVX512-BF16)
dequantizes the weight and calls `linear`; inference on a CPU with AVX512-BF16 first repacks the weight
(`_convert_weight_packed_for_cpu`: blocks of 32 output rows, absmax reshaped to [in / blocksize, out]) and then runs
a fused bf16 kernel. The repacking needs `in_features` to be a multiple of the quantization block (64) and
`out_features` a multiple of 32, as every real model's layers are; so the 4-bit model here is 64 wide. The repacking is
plain torch and is checked on every CPU; the fused kernel runs only on AVX512-BF16 and its test says so when skipped.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml


BLOCKSIZE = 64  # bitsandbytes' default 4-bit quantization block
PACK_ROWS = 32  # output rows per block of the packed CPU layout


@pytest.fixture(scope="module")
def qlora_data(slice_data, tmp_path_factory):
    """`slice_data` with a base model whose linear layers have real 4-bit widths (64 wide, 32-row KV projections)."""
    from trl_dynamicpo.recsys import PromptBuilder, read_catalogue, read_examples
    from trl_dynamicpo.tiny import build_recommender_lm

    root = tmp_path_factory.mktemp("qlora-base")
    texts = PromptBuilder().training_texts(read_examples(slice_data["train_file"])[:64])
    build_recommender_lm(texts, read_catalogue(slice_data["items_file"]), vocab_size=300, hidden_size=64,
                         num_layers=1, output_dir=root)  # fmt: skip
    return {**slice_data, "model_name_or_path": str(root)}


def _load_4bit(path: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.float32)


def _four_bit_layers(model) -> dict:
    import bitsandbytes as bnb

    layers = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert layers, "no layer was quantized"
    return layers


def _cpu_capability() -> str:
    import bitsandbytes.functional as bnbf
    import torch

    return f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, AVX512-BF16: {bool(bnbf.has_avx512bf16())}"


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


def test_qlora_sft_train_eval(four_bit, qlora_data, tmp_path):
    """Training steps take the dequantize path; the evaluation takes the packed kernel on AVX512-BF16 CPUs."""
    config = tmp_path / "qlora.yaml"
    config.write_text(yaml.safe_dump(_recipe(qlora_data, tmp_path, load_in_4bit=True, bnb_4bit_quant_type="nf4")))
    _pipeline(config)

    sft_dir, dpo_dir = tmp_path / "sft", tmp_path / "dpo"
    for folder in (sft_dir, dpo_dir):
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert Path(adapter["base_model_name_or_path"]) == Path(qlora_data["model_name_or_path"])
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


def _decode_packed(packed, absmax, code, shape):
    """The weight held in bitsandbytes' packed CPU layout, decoded independently of bitsandbytes.

    `packed` [N, K/2]: runs of 32 bytes whose low nibbles are the 4-bit codes of one (32-row block, column pair)
    in row order, and whose high nibbles continue the run; `absmax` [K / blocksize, N]: one scale per block of
    `blocksize` consecutive inputs of one output row.
    """
    import torch

    n, k = shape
    run = packed.reshape(-1, PACK_ROWS)
    codes = torch.cat([run & 0xF, run >> 4], dim=-1)  # [-1, 64]: (32 rows x 2 columns) per run
    codes = codes.reshape(n // PACK_ROWS, k // 2, PACK_ROWS, 2).transpose(1, 2).reshape(n, k)
    scales = absmax.float().T.repeat_interleave(BLOCKSIZE, dim=1)  # [N, K]
    return code[codes.long()] * scales


def test_layer_widths_fit_the_packed_cpu_layout(four_bit, qlora_data):
    """Every 4-bit layer of the test model converts to the packed layout and holds the same weight there.

    The conversion is what failed on AVX512-BF16 CPUs for a 32-wide model; it is plain torch, so this runs on any CPU.
    """
    import bitsandbytes.functional as bnbf
    import torch

    model = _load_4bit(qlora_data["model_name_or_path"])
    for name, layer in _four_bit_layers(model).items():
        state = layer.weight.quant_state
        assert state.blocksize == BLOCKSIZE and layer.in_features % BLOCKSIZE == 0, name
        reference = bnbf.dequantize_4bit(layer.weight.data, state)
        packed, packed_state = bnbf._convert_weight_packed_for_cpu(layer.weight.data.clone(), copy.deepcopy(state))
        assert packed_state.packing_format_for_cpu and tuple(packed.shape) == (layer.out_features, layer.in_features // 2)
        decoded = _decode_packed(packed, packed_state.absmax, state.code, tuple(state.shape))
        # absmax is stored in bf16 in the packed layout: 8 significant bits.
        torch.testing.assert_close(decoded, reference, rtol=1e-2, atol=1e-6, msg=name)


def test_narrow_layer_breaks_the_packed_cpu_layout(four_bit):
    """The mechanism of the AVX512-BF16 failure, on any CPU: a layer narrower than one block cannot be repacked
    (`shape '[32, 0]' is invalid for input of size 16`, as the former 32-wide test model hit in evaluation)."""
    import bitsandbytes.functional as bnbf
    import torch

    packed, state = bnbf.quantize_4bit(torch.randn(32, 32), quant_type="nf4", blocksize=BLOCKSIZE)
    with pytest.raises(RuntimeError, match=r"shape '\[32, 0\]' is invalid for input of size 16"):
        bnbf._convert_weight_packed_for_cpu(packed, state)


def test_packed_cpu_kernel_matches_dequantize_path(four_bit, qlora_data):
    """Inference on an AVX512-BF16 CPU takes the packed kernel; its logits match training mode's dequantize path."""
    import bitsandbytes.functional as bnbf
    import torch
    from transformers import AutoTokenizer

    if not bnbf.has_avx512bf16():
        pytest.skip(
            f"bitsandbytes' packed-weight CPU kernel needs AVX512-BF16 and this CPU has none ({_cpu_capability()}): "
            "only the dequantize path and the packed layout conversion run here"
        )
    model = _load_4bit(qlora_data["model_name_or_path"])
    tokenizer = AutoTokenizer.from_pretrained(qlora_data["model_name_or_path"])
    inputs = tokenizer(["The user listened to Muse, Placebo and Air. Next:"], return_tensors="pt")
    model.train()  # Qwen2 has no dropout by default: training mode only switches bitsandbytes' path
    with torch.no_grad():
        dequantized = model(**inputs).logits
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in _four_bit_layers(model).values())
    model.eval()
    with torch.inference_mode():
        packed = model(**inputs).logits
    assert all(m.weight.quant_state.packing_format_for_cpu for m in _four_bit_layers(model).values())
    # The packed kernel computes in bf16.
    torch.testing.assert_close(packed, dequantized, rtol=5e-2, atol=5e-2)
