"""`trl-dynamicpo train`: DynamicPO (or DMPO / S-DPO / MPPO and the ablations), `trl_dynamicpo.pipeline.run_train`."""

from __future__ import annotations

from collections.abc import Sequence

from ..pipeline.train import run_train
from ..variants import method_name
from .parsing import parse_command


def main(argv: Sequence[str] | None = None) -> int:
    data_args, training_args, model_args = parse_command("train", argv=argv)
    trainer = run_train(data_args, training_args, model_args)
    trainer.accelerator.print(f"{method_name(training_args)} model saved to {training_args.output_dir}")
    trainer.accelerator.end_training()
    return 0
