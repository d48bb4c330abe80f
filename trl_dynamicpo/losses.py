"""Multi-negative preference losses with DynamicPO's boundary selection and dual-margin beta.

Pure tensor code, vectorised over examples and negatives: no Python loop over the batch, no `.item()`, no host
round trip. Each function's formula is in its docstring; `docs/method.md` explains the method and the conventions
the paper leaves open (also listed on `multi_negative_loss`). Each objective is one function returning its logit
and its per-negative gradient weights, registered in `OBJECTIVES`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


_EPS = 1e-8


def _work_dtype(device: torch.device) -> torch.dtype:
    # Selection compares sums of squares of log-probs that can reach 1e4: float64 where the device has it.
    return torch.float32 if device.type == "mps" else torch.float64


@functools.lru_cache(maxsize=64)
def _cut_table(num_values: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All (i, j) with 0 <= i <= j <= num_values, in lexicographic order (the tie-break order)."""
    pairs = list(itertools.combinations_with_replacement(range(num_values + 1), 2))
    table = torch.tensor(pairs, device=device, dtype=torch.long)
    return table[:, 0], table[:, 1]


def top_cluster_mask(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Highest-mean group of the exact one-dimensional k-means of each row, k = min(3, distinct values).

    Each row's valid values are sorted ascending (stable, so ties keep their column order) and every partition
    into k contiguous non-empty groups is scored by its within-group sum of squares; the best partition wins, the
    lexicographically first cut points among exact ties. With at most K = 20 negatives there are at most 231
    cuts per row, so an exhaustive search over prefix sums is both exact and fast.

    Args:
        values: (B, K) values to cluster.
        valid: (B, K) bool, at least one True per row.

    Returns:
        (B, K) bool mask of the top group, in the original column order.
    """
    batch, width = values.shape
    device = values.device
    work = values.to(_work_dtype(device))
    # Centre per row before squaring, for precision; invalid entries sort last.
    row_max = work.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    centred = (work - row_max).masked_fill(~valid, float("inf"))
    sorted_vals, order = torch.sort(centred, dim=1, stable=True)
    n = valid.sum(dim=1, keepdim=True)  # (B, 1)
    positions = torch.arange(width, device=device)
    in_row = positions < n  # (B, K) sorted positions holding valid values
    sorted_vals = sorted_vals.masked_fill(~in_row, 0.0)
    distinct = 1 + ((sorted_vals[:, 1:] != sorted_vals[:, :-1]) & in_row[:, 1:]).sum(dim=1, keepdim=True)
    k = distinct.clamp(max=3)

    cut_i, cut_j = _cut_table(width, device)  # (C,)
    ci, cj = cut_i[None, :], cut_j[None, :]  # (1, C)
    admissible = torch.where(
        k == 3,
        (ci >= 1) & (ci < cj) & (cj < n),
        torch.where(k == 2, (ci >= 1) & (ci < n) & (cj == n), (ci == n) & (cj == n)),
    )  # (B, C)

    # Within-group sums of squares from prefix sums: SSE[a, b) = sum x^2 - (sum x)^2 / (b - a). The values are
    # centred on the row maximum and in float64, so the subtraction loses nothing that matters.
    zero = sorted_vals.new_zeros(batch, 1)
    sum1 = torch.cat([zero, sorted_vals.cumsum(dim=1)], dim=1)  # (B, K + 1)
    sum2 = torch.cat([zero, sorted_vals.square().cumsum(dim=1)], dim=1)
    bounds = torch.stack([torch.zeros_like(cut_i), cut_i, cut_j, torch.full_like(cut_j, width)])  # (4, C)
    bounds = torch.minimum(bounds[None], n[:, :, None])  # (B, 4, C), clipped to each row's length
    lo, hi = bounds[:, :-1].reshape(batch, -1), bounds[:, 1:].reshape(batch, -1)  # the 3 groups of every cut
    group_sum = sum1.gather(1, hi) - sum1.gather(1, lo)
    group_sq = sum2.gather(1, hi) - sum2.gather(1, lo)
    sse = (group_sq - group_sum.square() / (hi - lo).to(work.dtype).clamp(min=1)).clamp(min=0)
    error = sse.view(batch, 3, -1).sum(dim=1).masked_fill(~admissible, float("inf"))  # (B, C)
    best = error.argmin(dim=1)  # first minimum = lexicographically first cuts

    start = torch.where(k.squeeze(1) == 3, cut_j[best], torch.where(k.squeeze(1) == 2, cut_i[best], 0))
    top_sorted = (positions[None, :] >= start[:, None]) & in_row
    return torch.zeros_like(valid).scatter(1, order, top_sorted)


def boundary_and_easy_sets(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""DynamicPO's dynamic boundary selection on policy log-probs (`docs/method.md`, mechanism 1).

        B = {j : p_j >= p+}                        if that set is non-empty,
            top group of the exact 1-D k-means of {p_j}, k = min(3, distinct values), otherwise
        E = {valid j} \ B                          or B when that is empty

    Returns:
        boundary (B, K) bool, easy (B, K) bool, used_clustering (B,) bool.
    """
    above = (rejected_logps >= chosen_logps[:, None]) & valid
    used_clustering = ~above.any(dim=1)
    clustered = top_cluster_mask(rejected_logps, valid)
    boundary = torch.where(used_clustering[:, None], clustered, above)
    easy = valid & ~boundary
    easy = torch.where(easy.any(dim=1, keepdim=True), easy, boundary)
    return boundary, easy, used_clustering


def dual_margin_beta(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    easy: torch.Tensor,
    valid: torch.Tensor,
    *,
    beta: float,
    margin: float,
    beta_scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-negative beta from the positive-to-boundary and boundary-to-easy margins (`docs/method.md`, mechanism 2).

        d_pb_j = p+ - p_j
        d_be_j = p_j - mean_{k in E} p_k
        beta_j = beta * (1 + s * tanh((d_pb_j - d_be_j - m) / (|d_pb_j| + |d_be_j| + 1e-8)))

    Returns:
        betas (B, K), d_pb (B, K), d_be (B, K); zero at invalid positions. Inputs should be detached.
    """
    easy_mean = (rejected_logps * easy).sum(dim=1, keepdim=True) / easy.sum(dim=1, keepdim=True).clamp(min=1)
    d_pb = chosen_logps[:, None] - rejected_logps
    d_be = rejected_logps - easy_mean
    scale = torch.tanh((d_pb - d_be - margin) / (d_pb.abs() + d_be.abs() + _EPS)) * beta_scale
    zero = torch.zeros((), dtype=rejected_logps.dtype, device=rejected_logps.device)
    return (
        torch.where(valid, beta * (1 + scale), zero),
        torch.where(valid, d_pb, zero),
        torch.where(valid, d_be, zero),
    )


def dmpo(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, betas: torch.Tensor, selected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""DMPO: the mean of the pairwise DPO logits over the selected negatives S.

        z = (1 / |S|) * sum_{j in S} beta_j * (s+ - s_j)
        w_j = beta_j

    where s = log pi(y|x) - log pi_ref(y|x) (or log pi(y|x) when reference-free). `w_j` is |dL/ds_j| up to the
    per-example factor sigmoid(-z) / |S| shared by every negative (see `multi_negative_loss`).

    Args:
        chosen_scores: (B,) s+.
        rejected_scores: (B, K) s_j.
        betas: (B, K) beta_j, detached.
        selected: (B, K) bool, the set S (non-empty per row).

    Returns:
        logit z (B,), gradient weights w (B, K), unmasked.
    """
    terms = betas * (chosen_scores[:, None] - rejected_scores)
    logit = torch.where(selected, terms, 0.0).sum(dim=1) / selected.sum(dim=1).clamp(min=1)
    return logit, betas


def sdpo(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, betas: torch.Tensor, selected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""S-DPO: a softmax over the selected negatives, the Plackett-Luce generalisation of DPO.

        z = -log sum_{j in S} exp(beta_j * (s_j - s+))
        w_j = beta_j * softmax_{j in S}(beta_j * (s_j - s+))

    Arguments and returns as for `dmpo`; `w_j` is |dL/ds_j| up to the per-example factor sigmoid(-z).
    """
    terms = (betas * (rejected_scores - chosen_scores[:, None])).masked_fill(~selected, float("-inf"))
    logit = -torch.logsumexp(terms, dim=1)
    weights = torch.softmax(terms.detach(), dim=1) * betas
    return logit, weights


def mppo(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, betas: torch.Tensor, selected: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""MPPO: margins of sequence probabilities, reference-free (the scores are policy log-probs p).

        z = sum_{j in S} beta_j * (exp(p+) - exp(p_j))
        w_j = beta_j * exp(p_j - max_{k in S} p_k)

    exp() of a log-prob never overflows. `w_j` is |dL/dp_j| up to the per-example factor
    sigmoid(-z) * exp(max_{k in S} p_k), taken out so that the weights cannot underflow.
    """
    terms = betas * (chosen_scores.exp()[:, None] - rejected_scores.exp())
    logit = torch.where(selected, terms, 0.0).sum(dim=1)
    detached = rejected_scores.detach()
    top = detached.masked_fill(~selected, float("-inf")).amax(dim=1, keepdim=True)
    return logit, betas * (detached - top).exp()


@dataclass(frozen=True)
class Objective:
    """A multi-negative objective, as the config, the CLI, the sweep and the model card name it.

    Attributes:
        name: the key (`DynamicPOConfig.multi_negative_loss`, `multi_negative_loss(objective=...)`).
        display_name: how tables, plots and the model card write it ("DMPO", "S-DPO").
        fn: `fn(chosen_scores, rejected_scores, betas, selected) -> (logit, weights)`, see `dmpo`.
        reference_free: the scores are the policy's log-probs: no reference model at all.
    """

    name: str
    display_name: str
    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    reference_free: bool


# The registry: every name, choice, default list and the decision to build a reference model comes from here, so
# adding an objective is one function and one line.
OBJECTIVES: dict[str, Objective] = {
    objective.name: objective
    for objective in (
        Objective("dmpo", "DMPO", dmpo, reference_free=False),
        Objective("sdpo", "S-DPO", sdpo, reference_free=False),
        Objective("mppo", "MPPO", mppo, reference_free=True),
    )
}
# The objective names, in registry order (kept under this name for existing callers; `tuple(OBJECTIVES)` is the same).
LOSS_TYPES = tuple(OBJECTIVES)
# TRL's default `beta` (`DPOConfig.beta`), the default everywhere in this package; the DynamicPO paper's recipes set 1.0.
DEFAULT_BETA = 0.1


def get_objective(name: str) -> Objective:
    """The registered objective called `name`; a `ValueError` listing the choices otherwise."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown objective {name!r}; expected one of {tuple(OBJECTIVES)}.") from None


def uses_reference_model(args) -> bool:
    """Whether a configuration needs a reference model (or reference log-probs).

    False for a reference-free objective (MPPO) and for `reference_free=True`; True otherwise.

    Args:
        args: anything with `multi_negative_loss` and, optionally, `reference_free` (a `DynamicPOConfig`, the CLI's
            arguments).
    """
    return not (get_objective(args.multi_negative_loss).reference_free or getattr(args, "reference_free", False))


def conservative_loss(logit: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    r"""Per-example loss of a logit z, with conservative label smoothing (cDPO) when `label_smoothing` > 0.

        L = -(1 - eps) * log sigmoid(z) - eps * log sigmoid(-z)

    i.e. the preference (chosen over every negative) is assumed flipped with probability eps in [0, 0.5);
    eps = 0 is the plain -log sigmoid(z).
    """
    if label_smoothing == 0.0:
        return -F.logsigmoid(logit)
    return -(1.0 - label_smoothing) * F.logsigmoid(logit) - label_smoothing * F.logsigmoid(-logit)


def chosen_nll_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    r"""Mean negative log-likelihood per token of the chosen completions of a batch (RPO; TRL's `"sft"` term).

        L_nll = -(sum_i log pi(y+_i | x_i)) / (sum_i |y+_i|)

    One scalar per batch, as TRL computes it: every chosen token of the batch weighs the same.

    Args:
        chosen_logps: (B,) log pi(y+|x), summed over the completion tokens.
        chosen_lengths: (B,) number of completion tokens scored in each `chosen_logps`.
    """
    return -chosen_logps.sum() / chosen_lengths.sum().clamp(min=1).to(chosen_logps.dtype)


def multi_negative_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    *,
    beta: float = DEFAULT_BETA,
    objective: str = "dmpo",
    boundary_selection: bool = True,
    dynamic_beta: bool = True,
    margin: float = 6.0,
    beta_scale: float = 0.5,
    rejected_mask: torch.Tensor | None = None,
    reference_free: bool = False,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    r"""Per-example DMPO / S-DPO / MPPO loss with DynamicPO's boundary selection and dual-margin beta.

        S = boundary set B (`boundary_and_easy_sets`) with selection on, every negative otherwise
        beta_j = dual-margin beta (`dual_margin_beta`) with dynamic beta on, `beta` otherwise
        z = objective logit over S (`dmpo`, `sdpo`, `mppo`),   L = conservative_loss(z, label_smoothing)

    Selection and beta_j are computed on the detached policy log-probs (no gradient flows through them). The
    scores s are log pi - log pi_ref, or the policy log-probs for a reference-free objective.

    Args:
        chosen_logps: (B,) policy log p(y+|x), summed over completion tokens.
        rejected_logps: (B, K) policy log p(y_j|x).
        ref_chosen_logps: (B,) reference log-probs; None (ignored) when reference-free.
        ref_rejected_logps: (B, K) reference log-probs; None (ignored) when reference-free.
        beta: base inverse temperature (default 0.1, TRL's; the DynamicPO paper uses 1.0).
        objective: a key of `OBJECTIVES`: "dmpo", "sdpo" or "mppo".
        boundary_selection: use only the boundary negatives (otherwise all of them).
        dynamic_beta: per-negative dual-margin beta (otherwise `beta` everywhere).
        margin: the margin m of the dual-margin formula.
        beta_scale: the scale s; beta_j lies in [beta (1 - s), beta (1 + s)].
        rejected_mask: (B, K) bool, False marks padding negatives (rows with fewer negatives). Every row needs at
            least one valid negative (not checked here, to keep the step free of host syncs; the trainer validates
            its data). Padding takes part in nothing and receives no gradient.
        reference_free: score DMPO / S-DPO on the policy log-probs alone (MPPO always is reference-free).
        label_smoothing: eps of the conservative loss, in [0, 0.5).

    Conventions (the paper leaves these open; `docs/method.md` lists them all):
        * Clustering sorts ascending and stably; among exactly equal errors the first cut points win.
        * With selection off and dynamic beta on, the dual-margin beta applies to every negative, with the easy
          set E computed as with selection on.
        * Computation runs in float32 (float64 for float64 inputs); `losses` has that dtype.

    Returns:
        losses: (B,) per-example loss.
        stats: detached tensors for logging: `boundary_mask`, `selected_mask`, `easy_mask` (B, K) bool;
            `used_clustering` (B,) bool; `betas`, `d_pb`, `d_be`, `rejected_rewards` (B, K), zero at padding
            (`betas` also zero outside the selected set); `chosen_rewards`, `reward_accuracy`,
            `boundary_grad_share` (B,): share of |dL/dp_j| summed over the selected negatives that reaches the
            boundary ones (1 with selection on; computed without the common per-example factor, so it stays
            defined when the loss saturates); with a reference, `chosen_logratio` (B,) = log pi(y+|x) -
            log pi_ref(y+|x).
    """
    spec = get_objective(objective)
    uses_reference = not (spec.reference_free or reference_free)
    if uses_reference and (ref_chosen_logps is None or ref_rejected_logps is None):
        free = [o.name for o in OBJECTIVES.values() if o.reference_free]
        raise ValueError(
            f"objective={objective!r} needs reference log-probs (or reference_free=True); reference-free: {free}."
        )
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5); got {label_smoothing}.")
    if rejected_logps.dim() != 2 or chosen_logps.shape != rejected_logps.shape[:1]:
        raise ValueError(
            f"Expected chosen_logps (B,) and rejected_logps (B, K); got {tuple(chosen_logps.shape)} and "
            f"{tuple(rejected_logps.shape)}."
        )

    compute_dtype = torch.float64 if chosen_logps.dtype == torch.float64 else torch.float32
    p_pos = chosen_logps.to(compute_dtype)
    p_neg = rejected_logps.to(compute_dtype)
    valid = (
        torch.ones_like(p_neg, dtype=torch.bool) if rejected_mask is None else rejected_mask.to(p_neg.device).bool()
    )
    # Padding values are replaced, not just masked, so that NaN or inf there cannot leak into sums or gradients.
    p_neg = torch.where(valid, p_neg, p_pos.detach()[:, None])

    with torch.no_grad():
        pos_d, neg_d = p_pos.detach(), p_neg.detach()
        boundary, easy, used_clustering = boundary_and_easy_sets(pos_d, neg_d, valid)
        selected = boundary if boundary_selection else valid
        betas, d_pb, d_be = dual_margin_beta(
            pos_d, neg_d, easy, valid, beta=beta, margin=margin, beta_scale=beta_scale
        )
        if not dynamic_beta:
            betas = torch.where(valid, torch.full_like(betas, beta), 0.0)
        betas = torch.where(selected, betas, 0.0)

    if uses_reference:
        chosen_scores = p_pos - ref_chosen_logps.to(compute_dtype)
        ref_neg = torch.where(valid, ref_rejected_logps.to(compute_dtype), ref_chosen_logps.to(compute_dtype)[:, None])
        rejected_scores = p_neg - ref_neg
    else:
        chosen_scores, rejected_scores = p_pos, p_neg

    logit, weights = spec.fn(chosen_scores, rejected_scores, betas, selected)
    losses = conservative_loss(logit, label_smoothing)

    with torch.no_grad():
        chosen_rewards = beta * chosen_scores.detach()
        # log pi(y+|x) - log pi_ref(y+|x): below zero, the answer's likelihood has fallen since the start (the
        # reference), the likelihood displacement that many negatives can cause.
        chosen_logratio = chosen_scores.detach() if uses_reference else None
        rejected_rewards = torch.where(valid, beta * rejected_scores.detach(), 0.0)
        beaten = (chosen_rewards[:, None] > rejected_rewards) | ~valid
        grads = torch.where(selected, weights.detach(), 0.0)
        total = grads.sum(dim=1)
        to_boundary = torch.where(boundary, grads, 0.0).sum(dim=1)
        share = torch.where(total > 0, to_boundary / total.clamp(min=torch.finfo(total.dtype).tiny), 1.0)
        stats = {
            "boundary_mask": boundary,
            "selected_mask": selected,
            "easy_mask": easy,
            "used_clustering": used_clustering,
            "betas": betas,
            "d_pb": d_pb,
            "d_be": d_be,
            "chosen_rewards": chosen_rewards,
            "rejected_rewards": rejected_rewards,
            "reward_accuracy": beaten.all(dim=1).to(compute_dtype),
            "boundary_grad_share": share,
        }
        if chosen_logratio is not None:
            stats["chosen_logratio"] = chosen_logratio
    return losses, stats
