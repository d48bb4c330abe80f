"""`trl-dynamicpo quickstart`: the offline CPU demo, `trl_dynamicpo.pipeline.run_quickstart`."""

from __future__ import annotations

from collections.abc import Sequence

from ..pipeline.quickstart import run_quickstart
from .parsing import parse_command


def main(argv: Sequence[str] | None = None) -> int:
    (qargs,) = parse_command("quickstart", argv=argv)
    run_quickstart(qargs)
    return 0
