"""The run record: `trl_dynamicpo_run.json`, the command and every argument that produced an output folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any


RUN_RECORD = "trl_dynamicpo_run.json"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_run_record(output_dir: str, command: str, **sections: Any) -> Path:
    """`trl_dynamicpo_run.json`: the command and the arguments that produced this folder."""
    from trl_dynamicpo import __version__

    path = Path(output_dir) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "trl_dynamicpo": __version__, **{k: _jsonable(v) for k, v in sections.items()}}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def parallelism(trainer) -> dict[str, Any]:
    """How the run was spread: accelerate's distributed type, process count, device (and ZeRO stage / FSDP version)."""
    state = trainer.accelerator.state
    info: dict[str, Any] = {
        "distributed_type": state.distributed_type.value,
        "num_processes": state.num_processes,
        "device": state.device.type,
    }
    if getattr(state, "deepspeed_plugin", None) is not None:
        info["zero_stage"] = state.deepspeed_plugin.zero_stage
    if getattr(state, "fsdp_plugin", None) is not None:
        info["fsdp_version"] = state.fsdp_plugin.fsdp_version
    return info
