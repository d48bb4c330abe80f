"""Command-line interface: `trl-dynamicpo {sft,train,eval,sweep,quickstart,leak-free,leak-check}`.

A thin layer over the library: `trl_dynamicpo.cli.main` is the entry point, `trl_dynamicpo.cli.parsing` parses the
flags with `trl.TrlParser` over a recipe (`trl_dynamicpo.pipeline.recipes`), and each command calls its library
function. Nothing outside this package imports it.
"""

from .main import main


__all__ = ["main"]
