"""`trl-dynamicpo eval`: ranking and/or generation metrics of a model, `trl_dynamicpo.pipeline.run_eval`."""

from __future__ import annotations

from collections.abc import Sequence

from ..pipeline.arguments import CANDIDATE_MODES
from ..pipeline.evaluate import format_summary, run_eval
from .parsing import parse_command


def main(argv: Sequence[str] | None = None) -> int:
    from accelerate import PartialState

    data_args, eval_args, model_args = parse_command("eval", argv=argv)
    results = run_eval(data_args, eval_args, model_args)
    state = PartialState()
    if state.is_main_process:
        print(format_summary(results, f"{results['model']} on {results['dataset']} ({results['split']}, "
                                      f"{CANDIDATE_MODES[results['candidates']]} candidates)"))  # fmt: skip
    state.destroy_process_group()
    return 0
