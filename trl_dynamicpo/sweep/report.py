"""A sweep's report: `runs.csv`, `curves.csv`, `summary.md` with paired statistics, and the plots.

Every comparison is paired on the same prompts (`stats.paired_comparison`): each run against the SFT model it
started from, DynamicPO against the plain objective at the same K (seeds matched, per-prompt hits averaged over
the seeds both have), and each K against the smallest K of the same objective and variant (does it collapse?).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..losses import LOSS_TYPES
from ..variants import OBJECTIVE_NAMES, VARIANTS
from .stats import PairedComparison, mean_interval, paired_comparison


PROTOCOL_METRICS = {"ranking": ("hr@1", "ndcg@5", "hr@5", "mrr"), "generation": ("hr@1", "valid_ratio")}
RUN_COLUMNS = [
    "eval_set", "protocol", "objective", "variant", "k", "seed", "n", "hr@1", "ndcg@5", "hr@5", "mrr",
    "valid_ratio", "vs_sft", "vs_sft_low", "vs_sft_high", "wins_vs_sft", "losses_vs_sft", "mcnemar_p_vs_sft",
    "steps", "train_time_s", "eval_time_s", "loss_first", "loss_final", "boundary_grad_share_final",
    "beta_mean_final", "boundary_negatives_final", "chosen_logp_shift_final", "logp_rejected_final",
    "answer_token_overlap_final",
]  # fmt: skip


def _hits(result: dict[str, Any], eval_set: str, protocol: str) -> np.ndarray | None:
    entry = result["eval"].get(eval_set, {}).get(protocol)
    return None if entry is None else np.asarray(entry["hits"], dtype=np.float64)


def _last(curves: list[dict], key: str, first: bool = False) -> float:
    values = [c[key] for c in curves if key in c]
    return (values[0] if first else values[-1]) if values else float("nan")


def run_rows(reference: dict[str, Any], results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run, evaluation set and protocol, with its paired difference to the SFT model."""
    rows = []
    for name, entry in reference["eval"].items():
        for protocol in PROTOCOL_METRICS:
            if protocol in entry:
                rows.append({"eval_set": name, "protocol": protocol, "objective": "sft", "variant": "sft", "k": 0,
                             "seed": "", "n": entry["n"], **_metrics(entry[protocol], protocol)})  # fmt: skip
    for result in results:
        point, curves = result["point"], result["curves"]
        for name, entry in result["eval"].items():
            for protocol in PROTOCOL_METRICS:
                if protocol not in entry:
                    continue
                base = _hits(reference, name, protocol)
                cmp = paired_comparison(entry[protocol]["hits"], base) if base is not None else None
                rows.append({
                    "eval_set": name, "protocol": protocol, **point, "n": entry["n"],
                    **_metrics(entry[protocol], protocol),
                    **(_comparison_columns(cmp, "vs_sft") if cmp is not None else {}),
                    "steps": result["steps"], "train_time_s": result["train_time_s"],
                    "eval_time_s": result["eval_time_s"], "loss_first": _last(curves, "loss", first=True),
                    "loss_final": _last(curves, "loss"),
                    "boundary_grad_share_final": _last(curves, "boundary_grad_share"),
                    "beta_mean_final": _last(curves, "beta_mean"),
                    "boundary_negatives_final": _last(curves, "boundary_negatives"),
                    "chosen_logp_shift_final": _last(curves, "chosen_logp_shift"),
                    "logp_rejected_final": _last(curves, "logp_rejected"),
                    "answer_token_overlap_final": _last(curves, "answer_token_overlap"),
                })  # fmt: skip
    return rows


def _metrics(entry: dict[str, Any], protocol: str) -> dict[str, float]:
    return {m: entry[m] for m in PROTOCOL_METRICS[protocol] if m in entry}


def _comparison_columns(cmp: PairedComparison, prefix: str) -> dict[str, float]:
    return {
        prefix: cmp.diff,
        f"{prefix}_low": cmp.ci_low,
        f"{prefix}_high": cmp.ci_high,
        f"wins_{prefix}": cmp.wins,
        f"losses_{prefix}": cmp.losses,
        f"mcnemar_p_{prefix}": cmp.mcnemar_p,
    }


def curve_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Long format: objective, variant, k, seed, step, metric, value."""
    rows = []
    for result in results:
        for entry in result["curves"]:
            for metric, value in entry.items():
                if metric != "step":
                    rows.append({**result["point"], "step": entry["step"], "metric": metric, "value": value})
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    def fmt(value):
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.6g}"
        return value

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: fmt(row.get(c, "")) for c in columns})
    return path


# ------------------------------------------------------------------------------------------------ grouping
def seed_groups(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], dict[int, dict[str, Any]]]:
    """(objective, variant, k) -> {seed: result}."""
    groups: dict[tuple[str, str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for result in results:
        p = result["point"]
        groups[(p["objective"], p["variant"], p["k"])][p["seed"]] = result
    return groups


def seed_mean_hits(runs: dict[int, dict[str, Any]], eval_set: str, protocol: str, seeds=None) -> np.ndarray | None:
    """Per-prompt hits averaged over `seeds` (default: all seeds of the group)."""
    chosen = [runs[s] for s in (seeds if seeds is not None else sorted(runs)) if s in runs]
    hits = [h for h in (_hits(r, eval_set, protocol) for r in chosen) if h is not None]
    return np.mean(hits, axis=0) if hits else None


def comparisons(
    reference: dict[str, Any], results: Sequence[dict[str, Any]], eval_set: str, protocol: str
) -> dict[str, list[tuple[str, PairedComparison]]]:
    """The paired comparisons of the summary, by section."""
    groups = seed_groups(results)
    base = _hits(reference, eval_set, protocol)
    out: dict[str, list[tuple[str, PairedComparison]]] = {
        "sft_vs_baselines": [], "vs_sft": [], "dynamicpo_vs_plain": [], "vs_smallest_k": []
    }  # fmt: skip
    # per-prompt baseline hits are recorded for the ranking protocol only (`evaluate_model(..., baselines=True)`)
    baseline_hits = reference["eval"].get(eval_set, {}).get(protocol, {}).get("baseline_hits") or {}
    if base is not None:
        out["sft_vs_baselines"] = [(f"SFT - {name}", paired_comparison(base, hits)) for name, hits in baseline_hits.items()]
    for (objective, variant, k), runs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        label = f"{VARIANTS[variant].display(objective)}, K={k} ({_seeds(runs)})"
        hits = seed_mean_hits(runs, eval_set, protocol)
        if hits is not None and base is not None:
            out["vs_sft"].append((label, paired_comparison(hits, base)))
    for (objective, variant, k), runs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        if variant == "plain":
            continue
        plain = groups.get((objective, "plain", k))
        if not plain:
            continue
        common = sorted(set(runs) & set(plain))
        if not common:
            continue
        a = seed_mean_hits(runs, eval_set, protocol, common)
        b = seed_mean_hits(plain, eval_set, protocol, common)
        if a is not None and b is not None:
            label = f"{VARIANTS[variant].display(objective)} - {OBJECTIVE_NAMES[objective]}, K={k} (seeds {common})"
            out["dynamicpo_vs_plain"].append((label, paired_comparison(a, b)))
    for (objective, variant, k), runs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        ks = sorted(kk for (o, v, kk) in groups if o == objective and v == variant)
        if k == ks[0]:
            continue
        smallest = groups[(objective, variant, ks[0])]
        common = sorted(set(runs) & set(smallest))
        a = seed_mean_hits(runs, eval_set, protocol, common) if common else None
        b = seed_mean_hits(smallest, eval_set, protocol, common) if common else None
        if a is not None and b is not None:
            label = f"{VARIANTS[variant].display(objective)}: K={k} - K={ks[0]} (seeds {common})"
            out["vs_smallest_k"].append((label, paired_comparison(a, b)))
    return out


def _order(key: tuple[str, str, int]) -> tuple[int, int, int]:
    objective, variant, k = key
    return (list(LOSS_TYPES).index(objective), list(VARIANTS).index(variant), k)


def _seeds(runs: dict[int, Any]) -> str:
    seeds = sorted(runs)
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds}"


# ------------------------------------------------------------------------------------------------ summary
def summary_markdown(
    reference: dict[str, Any], results: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = ()
) -> str:
    """`summary.md`: metric tables by K, then every paired comparison, per evaluation set and protocol."""
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    if notes:
        lines.append("")
    groups = seed_groups(results)
    for eval_set, entry in reference["eval"].items():
        for protocol in PROTOCOL_METRICS:
            if protocol not in entry:
                continue
            lines += [f"## {eval_set}: {protocol} protocol (n = {entry['n']} prompts)", ""]
            ref = entry[protocol]
            cells = ", ".join(f"{m.upper()} {ref[m]:.4f}" for m in PROTOCOL_METRICS[protocol] if m in ref)
            lines.append(f"SFT model (start of every run): {cells}.")
            baselines = reference["eval"][eval_set].get("baselines") or {}
            if baselines and protocol == "ranking":
                lines.append("Baselines (HR@1): " + ", ".join(f"{k} {v['hr@1']:.4f}" for k, v in baselines.items()) + ".")
            lines.append("")
            lines += _hr_table(groups, eval_set, protocol)
            sections = comparisons(reference, results, eval_set, protocol)
            for key, heading in (
                ("sft_vs_baselines", "The SFT model against each baseline (HR@1, SFT - baseline)"),
                ("vs_sft", "Paired difference to the SFT model (HR@1, run - SFT)"),
                ("dynamicpo_vs_plain", "DynamicPO (or an ablation) - the plain objective, same K and seeds"),
                ("vs_smallest_k", "Collapse check: each K - the smallest K, same objective, variant and seeds"),
            ):
                if sections[key]:
                    lines += [f"### {heading}", "", "| comparison | difference [95% CI] (wins/losses, McNemar) |",
                              "| --- | --- |"]  # fmt: skip
                    lines += [f"| {label} | {cmp.describe()}{' **' if cmp.significant else ''} |"
                              for label, cmp in sections[key]]  # fmt: skip
                    lines.append("")
    lines.append("Differences are paired on the same prompts; intervals are 95% paired-bootstrap intervals; ** marks "
                 "an interval that excludes zero. Several seeds: per-prompt hits are averaged over seeds first.")  # fmt: skip
    return "\n".join(lines) + "\n"


def _hr_table(groups, eval_set: str, protocol: str) -> list[str]:
    ks = sorted({k for (_, _, k) in groups})
    lines = ["| objective | variant | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for (objective, variant) in sorted({(o, v) for (o, v, _) in groups}, key=lambda ov: _order((*ov, 0))):
        cells = []
        for k in ks:
            runs = groups.get((objective, variant, k))
            values = [float(np.mean(h)) for h in (_hits(r, eval_set, protocol) for r in (runs or {}).values())
                      if h is not None]  # fmt: skip
            cells.append("" if not values else f"{np.mean(values):.4f}" + (f" (n={len(values)})" if len(values) > 1 else ""))
        lines.append(f"| {OBJECTIVE_NAMES[objective]} | {VARIANTS[variant].label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


# ------------------------------------------------------------------------------------------------ plots
VARIANT_STYLE = {
    "plain": {"color": "tab:red", "marker": "o", "linestyle": "-"},
    "dynamicpo": {"color": "tab:blue", "marker": "s", "linestyle": "-"},
    "selection_only": {"color": "tab:green", "marker": "^", "linestyle": "--"},
    "beta_only": {"color": "tab:purple", "marker": "v", "linestyle": "--"},
}


def plot_hr_vs_k(reference, results, eval_set: str, path: Path) -> Path | None:
    """HR@1 vs K per objective and protocol, two rows each: HR@1 with 95% bootstrap bands (SFT and the co-occurrence
    baseline as lines), and the paired difference to the SFT model with its 95% paired-bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = seed_groups(results)
    objectives = [o for o in LOSS_TYPES if any(key[0] == o for key in groups)]
    protocols = [p for p in PROTOCOL_METRICS if p in reference["eval"].get(eval_set, {})]
    if not objectives or not protocols:
        return None
    fig, axes = plt.subplots(2 * len(protocols), len(objectives), figsize=(max(5.0, 4.3 * len(objectives)),
                             2.9 * 2 * len(protocols)), squeeze=False, sharey="row")  # fmt: skip
    for p_index, protocol in enumerate(protocols):
        sft = _hits(reference, eval_set, protocol)
        baselines = reference["eval"][eval_set].get("baselines") or {}
        for col, objective in enumerate(objectives):
            top, bottom = axes[2 * p_index][col], axes[2 * p_index + 1][col]
            for variant, style in VARIANT_STYLE.items():
                ks = sorted(k for (o, v, k) in groups if o == objective and v == variant)
                if not ks:
                    continue
                hits = [seed_mean_hits(groups[(objective, variant, k)], eval_set, protocol) for k in ks]
                bands = [mean_interval(h) for h in hits]
                top.plot(ks, [b[0] for b in bands], label=VARIANTS[variant].label, markersize=4, **style)
                top.fill_between(ks, [b[1] for b in bands], [b[2] for b in bands], color=style["color"], alpha=0.12)
                if sft is not None:
                    diffs = [paired_comparison(h, sft) for h in hits]
                    bottom.plot(ks, [d.diff for d in diffs], markersize=4, **style)
                    bottom.fill_between(ks, [d.ci_low for d in diffs], [d.ci_high for d in diffs], color=style["color"],
                                        alpha=0.15)  # fmt: skip
            if sft is not None:
                top.axhline(float(sft.mean()), color="black", linestyle=":", label="SFT (start)")
                bottom.axhline(0.0, color="black", linestyle=":")
            low, high = top.get_ylim()
            if protocol == "ranking" and "cooccurrence" in baselines and low <= baselines["cooccurrence"]["hr@1"] <= high:
                top.axhline(baselines["cooccurrence"]["hr@1"], color="0.5", linestyle="--", linewidth=1,
                            label="co-occurrence")  # fmt: skip
            top.set_title(f"{OBJECTIVE_NAMES[objective]}: {protocol} HR@1", fontsize=9)
            bottom.set_title(f"{OBJECTIVE_NAMES[objective]}: {protocol} HR@1 - SFT (paired)", fontsize=9)
            bottom.set_xlabel("K (negatives per prompt)")
            for ax in (top, bottom):
                ax.grid(alpha=0.3)
                ax.set_xticks(sorted({k for (o, _, k) in groups if o == objective}))
        axes[2 * p_index][0].set_ylabel("HR@1")
        axes[2 * p_index + 1][0].set_ylabel("difference")
        axes[2 * p_index][0].legend(fontsize=7)
    fig.suptitle(f"{eval_set}: bands are 95% bootstrap intervals over prompts", fontsize=9)
    return _save(fig, path)


# The per-step panels of curves.png: the loss and HR@1, then what shows collapse coming (the answer's log-prob
# against its start, the negatives' log-prob, the boundary set, the answer tokens the negatives share) and the
# gradient share on the boundary negatives.
CURVE_PANELS = ("loss", "hr1_subset", "chosen_logp_shift", "logp_rejected", "boundary_negatives",
                "answer_token_overlap", "boundary_grad_share")  # fmt: skip


def plot_curves(results, path: Path, metrics=CURVE_PANELS) -> Path | None:
    """Per-step curves (first seed): one row per objective, one column per metric, K as colour, variant as style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in results if r["point"]["seed"] == min(x["point"]["seed"] for x in results)]
    objectives = [o for o in LOSS_TYPES if any(r["point"]["objective"] == o for r in chosen)]
    metrics = [m for m in metrics if any(m in c for r in chosen for c in r["curves"])]
    if not objectives or not metrics:
        return None
    ks = sorted({r["point"]["k"] for r in chosen})
    cmap = plt.get_cmap("viridis")
    colour = {k: cmap(i / max(len(ks) - 1, 1)) for i, k in enumerate(ks)}
    titles = {"loss": "training loss", "hr1_subset": "HR@1 (validation subset)",
              "chosen_logp_shift": "log p(answer) - its start", "logp_rejected": "mean log p(negative)",
              "boundary_negatives": "boundary negatives |B|", "answer_token_overlap": "answer tokens in negatives",
              "boundary_grad_share": "gradient share on boundary negatives"}  # fmt: skip
    fig, axes = plt.subplots(len(objectives), len(metrics), figsize=(3.4 * len(metrics), 2.8 * len(objectives)),
                             squeeze=False)  # fmt: skip
    for row, objective in enumerate(objectives):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            for r in chosen:
                p = r["point"]
                if p["objective"] != objective or p["variant"] not in ("plain", "dynamicpo"):
                    continue
                points = [(c["step"], c[metric]) for c in r["curves"] if metric in c]
                if points:
                    ax.plot(*zip(*points), color=colour[p["k"]], linestyle="-" if p["variant"] == "plain" else "--",
                            label=f"K={p['k']} {VARIANTS[p['variant']].label}", linewidth=1)  # fmt: skip
            ax.set_title(f"{OBJECTIVE_NAMES[objective]}: {titles.get(metric, metric)}", fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.suptitle("Per-step curves (solid: plain, dashed: DynamicPO)", fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(sweep_dir: Path, reference, results, title: str, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write runs.csv, curves.csv, summary.md and the plots into `sweep_dir`; returns the paths."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "runs": write_csv(sweep_dir / "runs.csv", run_rows(reference, results), RUN_COLUMNS),
        "curves": write_csv(sweep_dir / "curves.csv", curve_rows(results),
                            ["objective", "variant", "k", "seed", "step", "metric", "value"]),  # fmt: skip
    }
    summary = sweep_dir / "summary.md"
    summary.write_text(summary_markdown(reference, results, title, notes), encoding="utf-8")
    written["summary"] = summary
    if results:
        for eval_set in reference["eval"]:
            figure = plot_hr_vs_k(reference, results, eval_set, sweep_dir / f"hr1_vs_k_{eval_set}.png")
            if figure is not None:
                written[f"hr1_vs_k_{eval_set}"] = figure
        figure = plot_curves(results, sweep_dir / "curves.png")
        if figure is not None:
            written["curves_plot"] = figure
    return written
