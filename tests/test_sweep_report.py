"""The sweep report from synthetic results (no training): the paired comparisons against a direct computation on
the per-prompt hits, the seed averaging, runs.csv / curves.csv, the summary sections and the plots."""

import csv

import numpy as np
import pytest

from trl_dynamicpo.sweep.report import comparisons, write_report


N = 60


def _hits(rng, rate):
    return [int(v) for v in rng.random(N) < rate]


def _result(rng, objective, variant, k, seed, rate):
    curves = [{"step": s, "loss": 0.7 - 0.1 * s, "chosen_logp_shift": -0.2 * s, "answer_token_overlap": 0.1 + 0.01 * k,
               "boundary_negatives": 1.0 + k / 4, "logp_rejected": -30.0 - s} for s in (1, 2, 3)]  # fmt: skip
    return {
        "kind": "run", "name": f"{objective}-{variant}-k{k}-s{seed}",
        "point": {"objective": objective, "variant": variant, "k": k, "seed": seed},
        "steps": 3, "train_time_s": 1.0, "eval_time_s": 1.0, "curves": curves,
        "eval": {"eval": {"n": N, "ranking": {"hr@1": rate, "hits": _hits(rng, rate)}}},
    }  # fmt: skip


@pytest.fixture()
def sweep():
    rng = np.random.default_rng(0)
    reference = {"eval": {"eval": {"n": N, "ranking": {"hr@1": 0.5, "hits": _hits(rng, 0.5),
                                                       "baseline_hits": {"popularity": _hits(rng, 0.2)}}}}}  # fmt: skip
    results = [
        _result(rng, "dmpo", variant, k, seed, rate)
        for variant, rate in (("plain", 0.4), ("dynamicpo", 0.55))
        for k in (1, 19)
        for seed in ((0, 1) if k == 19 else (0,))
    ]
    return reference, results


def test_comparisons_are_paired_and_average_seeds(sweep):
    reference, results = sweep
    by_name = {r["name"]: np.asarray(r["eval"]["eval"]["ranking"]["hits"], float) for r in results}
    base = np.asarray(reference["eval"]["eval"]["ranking"]["hits"], float)
    out = comparisons(reference, results, "eval", "ranking")
    sections = {section: dict(entries) for section, entries in out.items()}
    k19 = {v: (by_name[f"dmpo-{v}-k19-s0"] + by_name[f"dmpo-{v}-k19-s1"]) / 2 for v in ("plain", "dynamicpo")}
    vs_plain = next(c for label, c in sections["dynamicpo_vs_plain"].items() if "K=19" in label)
    assert vs_plain.diff == pytest.approx(float((k19["dynamicpo"] - k19["plain"]).mean()))
    collapse = next(c for label, c in sections["vs_smallest_k"].items() if label.startswith("DMPO:"))
    # K = 19 against K = 1 on the seeds both have (seed 0 only)
    assert collapse.diff == pytest.approx(float((by_name["dmpo-plain-k19-s0"] - by_name["dmpo-plain-k1-s0"]).mean()))
    vs_sft = next(c for label, c in sections["vs_sft"].items() if label.startswith("DMPO, K=19"))
    assert vs_sft.diff == pytest.approx(float((k19["plain"] - base).mean()))
    d = k19["plain"] - base
    assert (vs_sft.wins, vs_sft.losses) == pytest.approx((d.clip(0).sum(), (-d).clip(0).sum()))
    assert vs_sft.ci_low <= vs_sft.diff <= vs_sft.ci_high
    assert list(sections["sft_vs_baselines"]) == ["SFT - popularity"]


def test_write_report_files(sweep, tmp_path):
    reference, results = sweep
    written = write_report(tmp_path, reference, results, "Synthetic sweep", notes=["a note"])
    assert {"runs", "curves", "summary", "hr1_vs_k_eval", "curves_plot"} <= set(written)
    with open(written["runs"], encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1 + len(results)  # the SFT row, then one row per run
    run = next(r for r in rows if r["variant"] == "plain" and r["k"] == "19" and r["seed"] == "1")
    assert float(run["chosen_logp_shift_final"]) == pytest.approx(-0.6)
    assert float(run["answer_token_overlap_final"]) == pytest.approx(0.29)
    with open(written["curves"], encoding="utf-8") as handle:
        metrics = {r["metric"] for r in csv.DictReader(handle)}
    assert {"chosen_logp_shift", "answer_token_overlap", "boundary_negatives", "logp_rejected"} <= metrics
    summary = written["summary"].read_text(encoding="utf-8")
    assert summary.startswith("# Synthetic sweep") and "- a note" in summary
    assert "Collapse check" in summary and "DynamicPO (DMPO) - DMPO, K=19 (seeds [0, 1])" in summary
    assert written["curves_plot"].stat().st_size > 0 and written["hr1_vs_k_eval"].stat().st_size > 0


def test_curves_from_the_trainer_state(tmp_path):
    """Per-step curves merge the loss log and the ranking callback's log of one step, under short names."""
    import json

    from trl_dynamicpo.sweep.run import curves_from_state

    history = [
        {"step": 2, "loss": 0.6, "dynamicpo/chosen_logp_shift": -0.1, "dynamicpo/answer_token_overlap": 0.2},
        {"step": 2, "eval_rank_hr@1": 0.4},
        {"step": 4, "loss": 0.5, "logps/rejected": -31.0},
        {"step": 4, "train_runtime": 9.0, "loss": 0.55},  # the end-of-training summary is not a step
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert curves_from_state(tmp_path) == [
        {"step": 2, "loss": 0.6, "chosen_logp_shift": -0.1, "answer_token_overlap": 0.2, "hr1_subset": 0.4},
        {"step": 4, "loss": 0.5, "logp_rejected": -31.0},
    ]
    assert curves_from_state(tmp_path / "missing") == []
