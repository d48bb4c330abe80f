"""`trl-dynamicpo sft`: supervised fine-tuning on (prompt, target item), `trl_dynamicpo.pipeline.run_sft`."""

from __future__ import annotations

from collections.abc import Sequence

from ..pipeline.sft import run_sft
from .parsing import parse_command


def main(argv: Sequence[str] | None = None) -> int:
    data_args, training_args, model_args = parse_command("sft", argv=argv)
    trainer = run_sft(data_args, training_args, model_args)
    trainer.accelerator.print(f"SFT model saved to {training_args.output_dir}")
    trainer.accelerator.end_training()
    return 0
