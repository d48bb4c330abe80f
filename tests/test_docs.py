"""The reference page stays in step with the code: every option `DynamicPOConfig` adds to `DPOConfig` and every
logged metric has a row in docs/trainer.md."""

import dataclasses
import re
from pathlib import Path

from trl import DPOConfig

from trl_dynamicpo import DynamicPOConfig
from trl_dynamicpo.trainer import METRIC_KEYS


DOCS = Path(__file__).resolve().parents[1] / "docs"


def _table_keys(text: str) -> set[str]:
    """Backquoted names in the first column of the markdown tables of `text`."""
    keys = set()
    for line in text.splitlines():
        if line.startswith("| `"):
            keys.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return keys


def test_every_config_option_has_a_row():
    added = {f.name for f in dataclasses.fields(DynamicPOConfig)} - {f.name for f in dataclasses.fields(DPOConfig)}
    assert added, "DynamicPOConfig adds options to DPOConfig"
    missing = added - _table_keys((DOCS / "trainer.md").read_text(encoding="utf-8"))
    assert not missing, f"docs/trainer.md lacks a DynamicPOConfig row for {sorted(missing)}"


def test_every_logged_metric_has_a_row():
    text = (DOCS / "trainer.md").read_text(encoding="utf-8")
    documented = _table_keys(text)
    # `dynamicpo/beta_mean`, `dynamicpo/beta_min`, ... share a row; `logps/chosen`, `logps/rejected` too.
    missing = [key for key in METRIC_KEYS if key not in documented and f"`{key}`" not in text]
    assert not missing, f"docs/trainer.md lacks the logged metrics {missing}"
