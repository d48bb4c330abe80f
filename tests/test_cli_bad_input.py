"""Bad rows in a LLaRA / S-DPO file, end to end through the `trl-dynamicpo` console script.

Each kind of bad row stops `sft`, `train` or `eval` (before any model is loaded) with an error naming the file, the
row (0-based record index), its line and the field; `--drop_invalid_rows true` skips them and logs how many, per field.
A name outside the catalogue (the public LastFM validation file's "Plus 44") is no error: the row is kept and the
log counts such rows, with examples. Nothing is dropped without a count in the log.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow  # the console script in subprocesses


BAD_AT = 5  # the bad record's index; the files have no blank line, so it is on line BAD_AT + 1
GOOD_ROWS = 12


def _console() -> list[str]:
    console = shutil.which("trl-dynamicpo")
    return [console] if console else [sys.executable, "-m", "trl_dynamicpo"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONWARNINGS": "ignore"}  # fmt: skip


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*_console(), *args], capture_output=True, text=True, env=_env(), timeout=600)


@pytest.fixture(scope="module")
def good_lines():
    """JSON lines of the bundled training sample, whose every name is in the bundled catalogue."""
    from trl_dynamicpo.recsys import load_sample

    return [json.dumps(ex.to_dict(), ensure_ascii=False) for ex in load_sample("train", leak_free=False)[:GOOD_ROWS]]


def _with_bad_line(path: Path, good_lines: list[str], *bad: str) -> Path:
    lines = [*good_lines[:BAD_AT], *bad, *good_lines[BAD_AT:]]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _good(good_lines, at=BAD_AT) -> dict:
    return json.loads(good_lines[at])


def _common(command, slice_data, tmp_path) -> list[str]:
    from trl_dynamicpo.recsys import sample_path

    return ["--model_name_or_path", slice_data["model_name_or_path"], "--items_file", str(sample_path("items")),
            "--output_dir", str(tmp_path / "out"), *(["--report_to", "none"] if command != "eval" else [])]  # fmt: skip


def _bad_row(kind: str, row: dict) -> str:
    if kind == "missing key":
        return json.dumps({k: v for k, v in row.items() if k != "trueSelection"})
    if kind == "target not among the candidates":
        return json.dumps({**row, "trueSelection": "Not A Candidate"})
    if kind == "duplicate candidates":
        return json.dumps({**row, "itemList": [*row["itemList"][:-1], row["itemList"][0]], "trueSelection": row["itemList"][0]})
    if kind == "empty history":
        return json.dumps({**row, "historyList": ""})
    if kind == "bad JSON line":
        return json.dumps(row)[:-2]
    if kind == "wrong types":
        return json.dumps({**row, "itemList": "::".join(row["itemList"])})
    raise AssertionError(kind)


# kind -> (command, field, message); the commands take turns (each parses its own files the same way).
KINDS = {
    "missing key": ("sft", "trueSelection", "missing field"),
    "target not among the candidates": ("train", "trueSelection", "target 'Not A Candidate' is not among the 20 candidates"),
    "duplicate candidates": ("eval", "itemList", "duplicate candidate"),
    "empty history": ("train", "historyList", "empty history"),
    "bad JSON line": ("sft", "(json)", "invalid JSON"),
    "wrong types": ("eval", "itemList", "expected a list of item names, got string"),
}


@pytest.fixture(scope="module")
def stopped_runs(slice_data, good_lines, tmp_path_factory):
    """kind -> (bad file, output folder, return code, stderr) of its command. The commands only parse their
    arguments and read the file before they stop, so they are started together (the start-up is most of the time)."""
    root = tmp_path_factory.mktemp("bad-input")
    started = {}
    for kind, (command, _, _) in KINDS.items():
        folder = root / kind.replace(" ", "-")
        folder.mkdir()
        data = _with_bad_line(folder / "prompts.jsonl", good_lines, _bad_row(kind, _good(good_lines)))
        file_flag = "--eval_file" if command == "eval" else "--train_file"
        args = [*_console(), command, file_flag, str(data), *_common(command, slice_data, folder)]
        with open(folder / "stderr.txt", "w") as stderr:
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, env=_env())
        started[kind] = (data, folder, process)
    runs = {}
    for kind, (data, folder, process) in started.items():
        returncode = process.wait(timeout=600)
        runs[kind] = (data, folder / "out", returncode, (folder / "stderr.txt").read_text())
    return runs


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_row_stops_the_command_naming_file_row_and_field(stopped_runs, kind):
    _, field, message = KINDS[kind]
    data, out, returncode, stderr = stopped_runs[kind]
    assert returncode != 0
    assert f"{data}: row {BAD_AT} (line {BAD_AT + 1}), field '{field}': {message}" in stderr, stderr[-3000:]
    assert not out.exists() or not any(out.iterdir())


def test_unknown_item_with_a_catalogue_is_counted(slice_data, good_lines, tmp_path):
    """As in the public validation file: "Plus 44" where the catalogue says "+44". The rows are kept (the model is
    evaluated on them) and the log counts them, naming the first row and field of each unknown name."""
    row, next_row = _good(good_lines), _good(good_lines, BAD_AT + 1)
    history = row["historyList"].split("::")
    candidates = list(next_row["itemList"])
    candidates[next(i for i, c in enumerate(candidates) if c != next_row["trueSelection"])] = "Plus 44"
    unknown = [json.dumps({**row, "historyList": "::".join([*history[:-1], "Plus 44"])}),
               json.dumps({**next_row, "itemList": candidates})]  # fmt: skip
    data = _with_bad_line(tmp_path / "val.jsonl", good_lines, *unknown)
    result = _run("eval", "--eval_file", str(data), *_common("eval", slice_data, tmp_path), "--max_eval_samples", "8",
                  "--candidates", "file", "--batch_size", "4", "--protocol", "ranking", "--baselines", "false",
                  "--show_progress", "false")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert (
        f"{data}: 2 of {GOOD_ROWS + 2} row(s) name 1 item(s) that are not in the catalogue (rows kept as they are): "
        f"'Plus 44' in 2 row(s), first row {BAD_AT} (line {BAD_AT + 1}), "
        "field 'historyList'"
    ) in result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["ranking"]["n"] == 8  # rows 5 and 6 (the unknown names) among them


def test_drop_invalid_rows_counts_every_kind(slice_data, good_lines, tmp_path):
    """`--drop_invalid_rows true` on a file with one row of each kind: the run trains on the others and the log says
    how many were skipped, per field, and which was first."""
    bad = [_bad_row(kind, _good(good_lines, i)) for i, kind in enumerate(KINDS)]
    data = _with_bad_line(tmp_path / "train.jsonl", good_lines, *bad)
    result = _run("train", "--train_file", str(data), *_common("train", slice_data, tmp_path), "--drop_invalid_rows", "true",
                  "--num_negatives", "3", "--per_device_train_batch_size", "4", "--max_steps", "1",
                  "--save_strategy", "no", "--bf16", "false", "--disable_tqdm", "true")  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    total = GOOD_ROWS + len(KINDS)
    assert (
        f"{data}: skipped {len(KINDS)} bad row(s) of {total} (trueSelection: 2, itemList: 2, historyList: 1, "
        f"(json): 1); first: {data}: row {BAD_AT} (line {BAD_AT + 1}), field 'trueSelection': missing field"
    ) in result.stderr, result.stderr[-3000:]
    assert f"on {GOOD_ROWS} prompts" in result.stderr
