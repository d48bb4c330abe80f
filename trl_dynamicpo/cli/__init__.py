"""Command-line interface: `trl-dynamicpo {sft,train,eval,quickstart,leak-free,leak-check}`.

See `trl_dynamicpo.cli.main` for the entry point and `trl_dynamicpo.cli.parsing` for the recipe format.
"""

from .main import main


__all__ = ["main"]
