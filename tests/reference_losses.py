"""Slow, per-example reference of the DynamicPO losses (tests only).

Written from docs/method.md (the base multi-negative losses, mechanism 1, mechanism 2, the switches), from the
formulas of conservative DPO (label smoothing) and of the chosen-answer NLL term (RPO, TRL's "sft" loss), and from
the conventions fixed for `trl_dynamicpo.losses.multi_negative_loss`, independently of that implementation:

* selection runs on plain Python floats (exact copies of the input values), one example at a time;
* the exact 1-D k-means enumerates every partition of the stably sorted values into k contiguous,
  non-empty groups (`itertools.combinations` yields cut tuples in lexicographic order and only a strictly
  smaller error replaces the incumbent, so exact ties keep the partition whose cuts come first);
* the loss of each example is built from 0-d float64 torch tensors with Python loops, so autograd gives
  the reference gradients; `boundary_grad_share` differentiates a fresh per-example copy of that loss.

Nothing here is vectorised on purpose: it is meant to be obviously right, not fast.
"""

import itertools
import math

import torch


EPS = 1e-8
OBJECTIVE_NAMES = ("dmpo", "sdpo", "mppo")


def exact_kmeans_1d(values, k):
    """Exact 1-D k-means by brute force.

    Returns ``(groups, cuts, error)``: ``groups`` lists, for each group in ascending order of its values,
    the positions (indices into ``values``) it holds; ``cuts`` are the cut positions in the sorted order.
    """
    n = len(values)
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    order = sorted(range(n), key=lambda i: values[i])  # Python's sort is stable: ties keep index order
    xs = [float(values[i]) for i in order]

    def sse(lo, hi):
        group = xs[lo:hi]
        mean = math.fsum(group) / len(group)
        return math.fsum((x - mean) ** 2 for x in group)

    best_err, best_cuts = None, None
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        err = math.fsum(sse(bounds[g], bounds[g + 1]) for g in range(k))
        if best_err is None or err < best_err:
            best_err, best_cuts = err, cuts
    bounds = (0, *best_cuts, n)
    groups = [order[bounds[g] : bounds[g + 1]] for g in range(k)]
    return groups, best_cuts, best_err


def select_example(p_plus, p_neg, valid):
    """Boundary/easy split of one example.

    ``p_plus``: float; ``p_neg``: list of floats (length K); ``valid``: list of bools.
    Returns ``(boundary, easy, used_clustering)`` with ``boundary``/``easy`` sorted lists of column indices.
    """
    valid_idx = [j for j in range(len(p_neg)) if valid[j]]
    if not valid_idx:
        raise ValueError("every example needs at least one valid negative")
    boundary = [j for j in valid_idx if p_neg[j] >= p_plus]
    used_clustering = False
    if not boundary:
        used_clustering = True
        vals = [p_neg[j] for j in valid_idx]
        k = min(3, len(set(vals)))
        groups, _, _ = exact_kmeans_1d(vals, k)
        means = [math.fsum(vals[i] for i in g) / len(g) for g in groups]
        assert all(a < b for a, b in zip(means, means[1:])), "contiguous groups of sorted values"
        boundary = sorted(valid_idx[i] for i in groups[-1])
    easy = [j for j in valid_idx if j not in boundary] or list(boundary)
    return boundary, easy, used_clustering


def margins_and_beta(p_plus, p_neg, j, easy, *, beta, dynamic_beta, margin, beta_scale):
    """(d_pb, d_be, beta_j) for negative ``j`` with easy set ``easy`` (all Python floats)."""
    d_pb = p_plus - p_neg[j]
    mean_easy = math.fsum(p_neg[k] for k in easy) / len(easy)
    d_be = p_neg[j] - mean_easy
    if not dynamic_beta:
        return d_pb, d_be, beta
    a_j = math.tanh((d_pb - d_be - margin) / (abs(d_pb) + abs(d_be) + EPS)) * beta_scale
    return d_pb, d_be, beta * (1.0 + a_j)


def neg_logsigmoid(z):
    """-log(sigmoid(z)) = softplus(-z) for a 0-d tensor, written out so it never overflows."""
    if float(z.detach()) >= 0:
        return torch.log1p(torch.exp(-z))
    return -z + torch.log1p(torch.exp(z))


def example_loss(objective, p_plus, p_neg, q_plus, q_neg, selected, betas, label_smoothing=0.0):
    """Loss of one example from 0-d tensors. ``p_neg``/``q_neg`` are lists of 0-d tensors, ``betas`` floats.

    With ``label_smoothing`` = eps > 0 (conservative DPO), the preference is taken to be flipped with probability
    eps: the loss is the expected logistic loss (1 - eps) * (-log sigmoid(z)) + eps * (-log sigmoid(-z)).
    """
    if objective == "mppo":
        z = 0.0
        for j in selected:
            z = z + betas[j] * (torch.exp(p_plus) - torch.exp(p_neg[j]))
    elif objective == "dmpo":
        r_plus = p_plus - q_plus
        z = 0.0
        for j in selected:
            z = z + betas[j] * (r_plus - (p_neg[j] - q_neg[j]))
        z = z / len(selected)
    elif objective == "sdpo":
        r_plus = p_plus - q_plus
        terms = [betas[j] * ((p_neg[j] - q_neg[j]) - r_plus) for j in selected]
        top = max(float(t.detach()) for t in terms)
        total = 0.0
        for t in terms:
            total = total + torch.exp(t - top)
        z = -(top + torch.log(total))
    else:
        raise ValueError(f"unknown objective {objective!r}")
    if label_smoothing == 0.0:
        return neg_logsigmoid(z)
    return (1.0 - label_smoothing) * neg_logsigmoid(z) + label_smoothing * neg_logsigmoid(-z)


def reference_chosen_nll(chosen_token_logps):
    """NLL of the chosen answers per token over a batch: ``chosen_token_logps`` is one list of per-token log-probs
    (floats or 0-d tensors) per example; every token of the batch counts once."""
    total, count = 0.0, 0
    for tokens in chosen_token_logps:
        for logp in tokens:
            total = total - logp
            count += 1
    return total / count


def reference_multi_negative_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta=0.1,
    objective="dmpo",
    boundary_selection=True,
    dynamic_beta=True,
    margin=6.0,
    beta_scale=0.5,
    rejected_mask=None,
    reference_free=False,
    label_smoothing=0.0,
):
    """Same contract as `multi_negative_loss`; always computes in float64 (losses are float64).

    ``reference_free`` scores DMPO / S-DPO on the policy log-probs alone (the reference log-probs are taken to
    be zero), as MPPO always does.

    Gradients flow (through ``.double()``) back to whichever inputs require them, the reference log-probs
    included (r = p - q); selection and beta_j are plain floats, hence detached.
    """
    if objective not in OBJECTIVE_NAMES:
        raise ValueError(f"unknown objective {objective!r}")
    no_reference = objective == "mppo" or reference_free
    if not no_reference and (ref_chosen_logps is None or ref_rejected_logps is None):
        raise ValueError(f"{objective} needs reference log-probs")
    n_rows, n_neg = rejected_logps.shape
    if no_reference:
        # Reference-free objectives never read the reference: use zeros that carry no graph.
        ref_chosen_logps = torch.zeros(n_rows, dtype=torch.float64)
        ref_rejected_logps = torch.zeros(n_rows, n_neg, dtype=torch.float64)
    if rejected_mask is None:
        rejected_mask = torch.ones(n_rows, n_neg, dtype=torch.bool)

    p_all, pn_all = chosen_logps.double(), rejected_logps.double()
    q_all, qn_all = ref_chosen_logps.double(), ref_rejected_logps.double()
    p_f, pn_f = p_all.detach().tolist(), pn_all.detach().tolist()
    q_f, qn_f = q_all.detach().tolist(), qn_all.detach().tolist()
    valid_all = rejected_mask.tolist()

    losses = []
    stats = {
        "boundary_mask": torch.zeros(n_rows, n_neg, dtype=torch.bool),
        "selected_mask": torch.zeros(n_rows, n_neg, dtype=torch.bool),
        "easy_mask": torch.zeros(n_rows, n_neg, dtype=torch.bool),
        "used_clustering": torch.zeros(n_rows, dtype=torch.bool),
        "betas": torch.zeros(n_rows, n_neg, dtype=torch.float64),
        "d_pb": torch.zeros(n_rows, n_neg, dtype=torch.float64),
        "d_be": torch.zeros(n_rows, n_neg, dtype=torch.float64),
        "chosen_rewards": torch.zeros(n_rows, dtype=torch.float64),
        "rejected_rewards": torch.zeros(n_rows, n_neg, dtype=torch.float64),
        "reward_accuracy": torch.zeros(n_rows, dtype=torch.float64),
        "boundary_grad_share": torch.zeros(n_rows, dtype=torch.float64),
    }
    for i in range(n_rows):
        valid = valid_all[i]
        boundary, easy, used = select_example(p_f[i], pn_f[i], valid)
        selected = boundary if boundary_selection else [j for j in range(n_neg) if valid[j]]
        betas = {}
        for j in range(n_neg):
            if not valid[j]:
                continue
            d_pb, d_be, beta_j = margins_and_beta(
                p_f[i], pn_f[i], j, easy, beta=beta, dynamic_beta=dynamic_beta, margin=margin, beta_scale=beta_scale
            )
            stats["d_pb"][i, j] = d_pb
            stats["d_be"][i, j] = d_be
            if j in selected:
                betas[j] = beta_j
                stats["betas"][i, j] = beta_j
        for j in boundary:
            stats["boundary_mask"][i, j] = True
        for j in selected:
            stats["selected_mask"][i, j] = True
        for j in easy:
            stats["easy_mask"][i, j] = True
        stats["used_clustering"][i] = used

        # the loss, connected to the inputs' graph
        p_neg = [pn_all[i, j] for j in range(n_neg)]
        q_neg = [qn_all[i, j] for j in range(n_neg)]
        losses.append(example_loss(objective, p_all[i], p_neg, q_all[i], q_neg, selected, betas, label_smoothing))

        # rewards and accuracy
        if objective == "mppo":
            chosen_reward = beta * p_f[i]
            rejected_reward = [beta * pn_f[i][j] for j in range(n_neg)]
        else:
            chosen_reward = beta * (p_f[i] - q_f[i])
            rejected_reward = [beta * (pn_f[i][j] - qn_f[i][j]) for j in range(n_neg)]
        stats["chosen_rewards"][i] = chosen_reward
        for j in range(n_neg):
            if valid[j]:
                stats["rejected_rewards"][i, j] = rejected_reward[j]
        beats_all = all(chosen_reward > rejected_reward[j] for j in range(n_neg) if valid[j])
        stats["reward_accuracy"][i] = 1.0 if beats_all else 0.0

        # share of |dL/dp_j| (policy negatives) that lands on boundary negatives, on a detached copy
        leaf_p = torch.tensor(p_f[i], dtype=torch.float64)
        leaf_neg = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in pn_f[i]]
        leaf_q = torch.tensor(q_f[i], dtype=torch.float64)
        leaf_qn = [torch.tensor(v, dtype=torch.float64) for v in qn_f[i]]
        loss_copy = example_loss(objective, leaf_p, leaf_neg, leaf_q, leaf_qn, selected, betas, label_smoothing)
        grads = torch.autograd.grad(loss_copy, [leaf_neg[j] for j in selected])
        mags = {j: abs(float(g)) for j, g in zip(selected, grads)}
        total = math.fsum(mags.values())
        on_boundary = math.fsum(mags[j] for j in selected if j in boundary)
        stats["boundary_grad_share"][i] = on_boundary / total if total > 0 else float("nan")

    return torch.stack(losses), stats
