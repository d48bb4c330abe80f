"""`multi_negative_loss` (vectorised) against the slow per-example reference in `reference_losses.py`.

Layout:
* self-checks of the reference (exact k-means optimality, hand-computed values);
* the fast function against the reference: values, gradients w.r.t. all four inputs and stats, for every
  objective x boundary_selection x dynamic_beta x K, in float64 (tight) and float32;
* edge cases (clustering path, ties, K < 3, padding, d_pb = d_be = 0, log-probs near -1e4, dtypes,
  K = 1 DPO equivalence, plain baselines, argument errors, order invariance).
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from reference_losses import exact_kmeans_1d, reference_multi_negative_loss, select_example


OBJECTIVE_NAMES = ("dmpo", "sdpo", "mppo")
KS = (1, 2, 3, 5, 15, 19)
MASK_KEYS = ("boundary_mask", "selected_mask", "used_clustering")
FLOAT_KEYS = ("betas", "d_pb", "d_be", "chosen_rewards", "rejected_rewards", "reward_accuracy", "boundary_grad_share")


@pytest.fixture(scope="module")
def fast():
    from trl_dynamicpo.losses import multi_negative_loss

    return multi_negative_loss


# ----------------------------------------------------------------------------------------------- helpers


def make_batch(n_rows, k, seed, dtype=torch.float64):
    """Random (chosen, rejected, ref_chosen, ref_rejected) in float64, exactly representable in ``dtype``.

    Rows cycle through three regimes: negatives scattered around the chosen one (some above), all below it
    (the clustering path) and exactly one above it.
    """
    g = torch.Generator().manual_seed(seed)
    chosen = -(torch.rand(n_rows, generator=g, dtype=torch.float64) * 5 + 2)  # [-7, -2]
    rejected = torch.empty(n_rows, k, dtype=torch.float64)
    for i in range(n_rows):
        u = torch.rand(k, generator=g, dtype=torch.float64)
        mode = i % 3
        if mode == 0:
            rejected[i] = chosen[i] + u * 6.5 - 5.0  # up to 1.5 above
        elif mode == 1:
            rejected[i] = chosen[i] - 0.01 - u * 6.0  # all strictly below
        else:
            rejected[i] = chosen[i] - 0.01 - u * 6.0
            rejected[i, int(u.argmax())] = chosen[i] + 0.3 + float(u.max())
    ref_chosen = chosen + 0.7 * torch.randn(n_rows, generator=g, dtype=torch.float64)
    ref_rejected = rejected + 0.7 * torch.randn(n_rows, k, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype).double() for t in (chosen, rejected, ref_chosen, ref_rejected))


def leaves(inputs, dtype):
    return [None if t is None else t.detach().to(dtype).clone().requires_grad_(True) for t in inputs]


def run_with_grads(fn, inputs, dtype, *, weights_seed=0, **kwargs):
    """Run ``fn`` on fresh leaves of ``dtype``; return (losses, stats, grads) with None grads as zeros."""
    xs = leaves(inputs, dtype)
    losses, stats = fn(*xs, **kwargs)
    g = torch.Generator().manual_seed(weights_seed)
    weights = torch.rand(losses.shape[0], generator=g, dtype=torch.float64) + 0.5
    objective = (losses.double() * weights).sum()
    wrt = [x for x in xs if x is not None]
    grads = torch.autograd.grad(objective, wrt, allow_unused=True)
    full = []
    it = iter(grads)
    for x in xs:
        if x is None:
            full.append(None)
            continue
        gx = next(it)
        full.append(torch.zeros_like(x) if gx is None else gx)
    return losses, stats, full


def assert_close(actual, expected, rtol, atol, what):
    torch.testing.assert_close(
        actual.detach().double(),
        expected.detach().double(),
        rtol=rtol,
        atol=atol,
        equal_nan=True,
        msg=lambda m: f"{what}: {m}",
    )


def compare(fast, inputs, *, dtype=torch.float64, rtol=1e-9, atol=1e-10, stats_atol=None, **kwargs):
    """Fast vs reference: losses, gradients w.r.t. the four inputs, stats. Returns both results."""
    losses, stats, grads = run_with_grads(fast, inputs, dtype, **kwargs)
    ref_losses, ref_stats, ref_grads = run_with_grads(reference_multi_negative_loss, inputs, torch.float64, **kwargs)
    assert losses.shape == ref_losses.shape
    assert torch.isfinite(losses).all(), losses
    assert_close(losses, ref_losses, rtol, atol, "losses")
    names = ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    for name, gx, rx in zip(names, grads, ref_grads):
        if rx is None:
            continue
        assert gx.dtype == dtype, (name, gx.dtype)
        assert torch.isfinite(gx).all(), name
        assert_close(gx, rx, rtol, atol, f"d loss / d {name}")
    for key in MASK_KEYS:
        assert stats[key].dtype == torch.bool, key
        assert torch.equal(stats[key], ref_stats[key]), (key, stats[key], ref_stats[key])
    if "easy_mask" in stats:
        assert torch.equal(stats["easy_mask"].bool(), ref_stats["easy_mask"]), "easy_mask"
    for key in FLOAT_KEYS:
        assert_close(stats[key], ref_stats[key], rtol, atol if stats_atol is None else stats_atol, f"stats[{key!r}]")
    return (losses, stats, grads), (ref_losses, ref_stats, ref_grads)


def one_row(chosen, rejected, ref_chosen=None, ref_rejected=None):
    """Inputs for a single example from Python lists (reference log-probs default to zeros)."""
    k = len(rejected)
    ref_chosen = 0.0 if ref_chosen is None else ref_chosen
    ref_rejected = [0.0] * k if ref_rejected is None else ref_rejected
    return (
        torch.tensor([chosen], dtype=torch.float64),
        torch.tensor([rejected], dtype=torch.float64),
        torch.tensor([ref_chosen], dtype=torch.float64),
        torch.tensor([ref_rejected], dtype=torch.float64),
    )


def brute_force_kmeans_error(values, k):
    """Minimum within-group SSE over every assignment of the points to k labels (any partition)."""
    best = math.inf
    for labels in itertools.product(range(k), repeat=len(values)):
        if len(set(labels)) != k:
            continue
        err = 0.0
        for c in range(k):
            group = [v for v, lab in zip(values, labels) if lab == c]
            mean = sum(group) / len(group)
            err += sum((v - mean) ** 2 for v in group)
        best = min(best, err)
    return best


# ---------------------------------------------------------------------------------- reference self-checks


@pytest.mark.parametrize("seed", range(6))
def test_reference_kmeans_is_globally_optimal(seed):
    g = torch.Generator().manual_seed(seed)
    values = (torch.randn(7, generator=g, dtype=torch.float64) * 4).tolist()
    for k in (1, 2, 3):
        groups, cuts, err = exact_kmeans_1d(values, k)
        assert len(cuts) == k - 1 and sorted(i for grp in groups for i in grp) == list(range(7))
        assert err == pytest.approx(brute_force_kmeans_error(values, k), rel=1e-12, abs=1e-12)


def test_reference_hand_checked_cases():
    # clustering: sorted -30 | -11 -10 | -2 -1 (error 1.0) -> boundary {-1, -2}, easy the rest
    b, e, used = select_example(0.0, [-1.0, -2.0, -10.0, -11.0, -30.0], [True] * 5)
    assert (b, e, used) == ([0, 1], [2, 3, 4], True)
    # exact tie: every 3-partition of -4 -3 -2 -1 has error 0.5; first cuts (1, 2) -> {-2, -1}
    assert exact_kmeans_1d([-4.0, -3.0, -2.0, -1.0], 3)[1] == (1, 2)
    assert select_example(0.0, [-1.0, -4.0, -2.0, -3.0], [True] * 4)[0] == [0, 2]
    # at or above the chosen one: no clustering; ">=" includes ties with p+
    assert select_example(-2.0, [-2.0, -5.0, -1.0], [True] * 3) == ([0, 2], [1], False)
    # all equal -> k = 1 -> everything; two distinct values -> k = 2 -> the higher value
    assert select_example(0.0, [-3.0, -3.0, -3.0], [True] * 3) == ([0, 1, 2], [0, 1, 2], True)
    assert select_example(0.0, [-3.0, -5.0, -3.0, -5.0, -5.0], [True] * 5)[0] == [0, 2]
    # K = 1 and padding
    assert select_example(0.0, [-3.0], [True]) == ([0], [0], True)
    assert select_example(0.0, [5.0, -3.0, -1.0, 7.0], [False, True, True, False])[0] == [2]


def test_reference_hand_checked_loss():
    # p+ = 0, negatives [-1, -2, -10, -11, -30], reference all zero: boundary {0, 1}, easy mean -17
    inputs = one_row(0.0, [-1.0, -2.0, -10.0, -11.0, -30.0])
    beta = 0.8
    losses, stats = reference_multi_negative_loss(*inputs, beta=beta, objective="dmpo")
    b0 = beta * (1 + 0.5 * math.tanh((1 - 16 - 6) / (1 + 16 + 1e-8)))
    b1 = beta * (1 + 0.5 * math.tanh((2 - 15 - 6) / (2 + 15 + 1e-8)))
    assert stats["betas"][0].tolist() == pytest.approx([b0, b1, 0, 0, 0], rel=1e-14)
    z = (b0 * 1 + b1 * 2) / 2
    assert float(losses[0]) == pytest.approx(math.log1p(math.exp(-z)), rel=1e-14)
    assert stats["d_be"][0].tolist() == pytest.approx([16, 15, 7, 6, -13], rel=1e-14)
    assert stats["d_pb"][0].tolist() == pytest.approx([1, 2, 10, 11, 30], rel=1e-14)
    # selection off: dmpo's gradient on p_j is proportional to beta_j, so the share is a beta ratio
    _, stats = reference_multi_negative_loss(*inputs, beta=beta, objective="dmpo", boundary_selection=False)
    betas = stats["betas"][0]
    assert float(stats["boundary_grad_share"][0]) == pytest.approx(float(betas[:2].sum() / betas.sum()), rel=1e-12)
    assert ((betas >= beta * 0.5) & (betas <= beta * 1.5)).all()


# ------------------------------------------------------------------------------- fast vs reference (grid)


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dynamic_beta", [True, False], ids=["dynbeta", "fixbeta"])
@pytest.mark.parametrize("boundary_selection", [True, False], ids=["select", "allneg"])
@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_matches_reference_float64(fast, objective, boundary_selection, dynamic_beta, k):
    inputs = make_batch(9, k, seed=1000 + k)
    (_, stats, _), _ = compare(
        fast, inputs, objective=objective, boundary_selection=boundary_selection, dynamic_beta=dynamic_beta
    )
    assert stats["used_clustering"].any() and not stats["used_clustering"].all()
    if boundary_selection:
        assert torch.equal(stats["boundary_grad_share"].double(), torch.ones(9, dtype=torch.float64))


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dynamic_beta", [True, False], ids=["dynbeta", "fixbeta"])
@pytest.mark.parametrize("boundary_selection", [True, False], ids=["select", "allneg"])
@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_matches_reference_float32(fast, objective, boundary_selection, dynamic_beta, k):
    inputs = make_batch(9, k, seed=2000 + k, dtype=torch.float32)
    (losses, _, _), _ = compare(
        fast,
        inputs,
        dtype=torch.float32,
        rtol=1e-5,
        atol=1e-5,
        objective=objective,
        boundary_selection=boundary_selection,
        dynamic_beta=dynamic_beta,
    )
    assert losses.dtype == torch.float32


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_matches_reference_other_hyperparameters(fast, objective):
    inputs = make_batch(12, 7, seed=7)
    for beta, margin, scale in [(0.1, 2.0, 0.5), (2.5, 0.0, 0.9), (0.7, 6.0, 0.0)]:
        for selection in (True, False):
            compare(
                fast,
                inputs,
                objective=objective,
                beta=beta,
                margin=margin,
                beta_scale=scale,
                boundary_selection=selection,
            )


# ------------------------------------------------------------------------------------- selection edge cases


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_all_negatives_above_chosen(fast, objective):
    inputs = one_row(-5.0, [-4.0, -1.0, -3.5, -5.0], -4.0, [-3.0, -2.0, -4.5, -5.5])
    (_, stats, _), _ = compare(fast, inputs, objective=objective)
    assert stats["boundary_mask"].all() and not stats["used_clustering"].any()
    # E = B, so d_be is measured against the mean of all negatives (-3.375)
    assert stats["d_be"][0].tolist() == pytest.approx([-0.625, 2.375, -0.125, -1.625], rel=1e-12)
    compare(fast, inputs, objective=objective, boundary_selection=False)


@pytest.mark.parametrize(
    ("chosen", "rejected", "boundary"),
    [
        (0.0, [-1.0, -2.0, -10.0, -11.0, -30.0], [0, 1]),
        (-0.5, [-30.0, -10.0, -1.0, -11.0, -2.0], [2, 4]),
        (0.0, [-12.0, -1.0, -2.0, -3.0, -10.0, -11.0, -30.0], [1, 2, 3]),
        (-1.0, [-1.5, -8.0, -9.0, -20.0], [0]),
        (0.0, [-4.0, -3.0, -2.0, -1.0], [2, 3]),  # exact 3-way tie of errors: first cuts win
        (0.0, [-1.0, -4.0, -2.0, -3.0], [0, 2]),  # same tie, other column order
        (0.0, [-3.0, -3.0, -3.0, -3.0], [0, 1, 2, 3]),  # one distinct value: k = 1
        (0.0, [-3.0, -5.0, -3.0, -5.0, -5.0], [0, 2]),  # two distinct values: k = 2
        (0.0, [-5.0, -1.0, -5.0, -1.0, -3.0], [1, 3]),  # three distinct values, duplicated
        (0.0, [-7.0], [0]),  # K = 1
        (0.0, [-7.0, -2.0], [1]),  # K = 2, distinct
        (0.0, [-2.0, -2.0], [0, 1]),  # K = 2, equal
        (-2.0, [-2.0, -9.0, -9.5], [0]),  # tie with p+ counts as boundary, no clustering
    ],
)
@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_known_boundary_sets(fast, objective, chosen, rejected, boundary):
    inputs = one_row(chosen, rejected, chosen + 0.25, [v - 0.5 for v in rejected])
    for selection, dyn in itertools.product((True, False), (True, False)):
        (_, stats, _), _ = compare(fast, inputs, objective=objective, boundary_selection=selection, dynamic_beta=dyn)
        expected = torch.zeros(1, len(rejected), dtype=torch.bool)
        expected[0, boundary] = True
        assert torch.equal(stats["boundary_mask"], expected), (stats["boundary_mask"], expected)
        assert bool(stats["used_clustering"][0]) == (max(rejected) < chosen)


def test_clustering_boundary_independent_of_column_order(fast):
    g = torch.Generator().manual_seed(3)
    chosen = torch.zeros(6, dtype=torch.float64)
    rejected = -0.05 - torch.rand(6, 15, generator=g, dtype=torch.float64) * 12  # all below: clustering path
    ref_chosen = torch.randn(6, generator=g, dtype=torch.float64) - 1
    ref_rejected = rejected + torch.randn(6, 15, generator=g, dtype=torch.float64)
    losses, stats = fast(chosen, rejected, ref_chosen, ref_rejected)
    assert stats["used_clustering"].all()
    assert (stats["boundary_mask"].sum(1) < 15).all()
    for seed in range(3):
        perm = torch.randperm(15, generator=torch.Generator().manual_seed(seed))
        losses_p, stats_p = fast(chosen, rejected[:, perm], ref_chosen, ref_rejected[:, perm])
        assert torch.equal(stats_p["boundary_mask"], stats["boundary_mask"][:, perm])
        torch.testing.assert_close(losses_p, losses, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stats_p["betas"], stats["betas"][:, perm], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ padding


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_padding_takes_part_in_nothing(fast, objective):
    k_valid = (5, 3, 1, 4)
    k = 7
    inputs = make_batch(len(k_valid), k, seed=11)
    mask = torch.zeros(len(k_valid), k, dtype=torch.bool)
    for i, n in enumerate(k_valid):
        mask[i, :n] = True
    # padding values that would change every set and margin if they took part: above p+, tied, tiny
    garbage = torch.tensor([3.0, 0.0, -1e4, -2.0, 1.0, -50.0, 0.5], dtype=torch.float64)
    chosen, rejected, ref_chosen, ref_rejected = (t.clone() for t in inputs)
    rejected = torch.where(mask, rejected, garbage)
    ref_rejected = torch.where(mask, ref_rejected, garbage.flip(0))
    padded = (chosen, rejected, ref_chosen, ref_rejected)
    for selection, dyn in itertools.product((True, False), (True, False)):
        kw = {"objective": objective, "boundary_selection": selection, "dynamic_beta": dyn}
        (losses, stats, grads), _ = compare(fast, padded, rejected_mask=mask, **kw)
        assert torch.equal(grads[1][~mask], torch.zeros_like(grads[1][~mask]))
        assert torch.equal(grads[3][~mask], torch.zeros_like(grads[3][~mask]))
        for key in ("boundary_mask", "selected_mask"):
            assert not stats[key][~mask].any(), key
        for key in ("betas", "d_pb", "d_be", "rejected_rewards"):
            assert torch.equal(stats[key][~mask], torch.zeros_like(stats[key][~mask])), key
        for i, n in enumerate(k_valid):
            alone = (chosen[i : i + 1], rejected[i : i + 1, :n], ref_chosen[i : i + 1], ref_rejected[i : i + 1, :n])
            l1, s1, g1 = run_with_grads(fast, alone, torch.float64, **kw)
            torch.testing.assert_close(losses[i : i + 1], l1, rtol=1e-12, atol=1e-12)
            assert torch.equal(stats["boundary_mask"][i : i + 1, :n], s1["boundary_mask"])
            assert torch.equal(stats["used_clustering"][i : i + 1], s1["used_clustering"])
            torch.testing.assert_close(stats["betas"][i : i + 1, :n], s1["betas"], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(
                stats["boundary_grad_share"][i : i + 1], s1["boundary_grad_share"], rtol=1e-12, atol=1e-12
            )


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
@pytest.mark.parametrize("pad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_non_finite_padding_does_not_leak(fast, objective, pad):
    inputs = make_batch(3, 4, seed=12)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [True, True, True, True]])
    chosen, rejected, ref_chosen, ref_rejected = (t.clone() for t in inputs)
    rejected[~mask] = pad
    ref_rejected[~mask] = pad
    for selection, dyn in itertools.product((True, False), (True, False)):
        kw = {"objective": objective, "boundary_selection": selection, "dynamic_beta": dyn}
        (_, stats, grads), _ = compare(fast, (chosen, rejected, ref_chosen, ref_rejected), rejected_mask=mask, **kw)
        assert torch.equal(grads[1][~mask], torch.zeros_like(grads[1][~mask]))
        for key in FLOAT_KEYS:
            assert torch.isfinite(stats[key]).all(), key


# ------------------------------------------------------------------------------------- numerical edge cases


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_zero_margins_no_nan(fast, objective, dtype):
    # every negative equals p+: B = all, E = B, d_pb = d_be = 0 -> tanh(-m / eps) = -1 -> beta (1 - s)
    inputs = one_row(-2.0, [-2.0, -2.0, -2.0], -1.0, [-1.5, -2.5, -3.0])
    beta, scale = 0.9, 0.5
    for selection in (True, False):
        (losses, stats, grads), _ = compare(
            fast,
            inputs,
            dtype=dtype,
            rtol=1e-6,
            atol=1e-6,
            objective=objective,
            beta=beta,
            boundary_selection=selection,
        )
        assert torch.equal(stats["d_pb"], torch.zeros_like(stats["d_pb"]))
        assert torch.equal(stats["d_be"], torch.zeros_like(stats["d_be"]))
        torch.testing.assert_close(
            stats["betas"].double(), torch.full((1, 3), beta * (1 - scale), dtype=torch.float64)
        )
        assert torch.isfinite(losses).all() and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_log_probs_near_minus_1e4(fast, objective, dtype):
    g = torch.Generator().manual_seed(5)
    n, k = 6, 5
    chosen = -1e4 + torch.rand(n, generator=g, dtype=torch.float64) * 10
    rejected = -1e4 + torch.rand(n, k, generator=g, dtype=torch.float64) * 10
    rejected[0] = chosen[0] - 1 - torch.rand(k, generator=g, dtype=torch.float64)  # clustering row
    variants = {
        "ref near -1e4": (chosen, rejected, chosen + 0.5, rejected - 0.5),
        # r+ ~ -1e4 and r_j ~ 0: the sigmoid argument is ~ -1e4 (loss ~ 1e4)
        "ref far apart": (chosen, rejected, torch.zeros(n, dtype=torch.float64), rejected + 0.1),
        # r+ ~ 0 and r_j ~ -1e4: the sigmoid argument is ~ +1e4 (loss ~ 0)
        "ref far apart, other way": (chosen, rejected, chosen - 0.1, torch.zeros(n, k, dtype=torch.float64)),
    }
    for name, raw in variants.items():
        inputs = tuple(t.to(dtype).double() for t in raw)
        for selection, dyn in itertools.product((True, False), (True, False)):
            kw = {"objective": objective, "boundary_selection": selection, "dynamic_beta": dyn}
            losses, stats, grads = run_with_grads(fast, inputs, dtype, **kw)
            assert torch.isfinite(losses).all(), (name, kw, losses)
            for gx in grads:
                assert torch.isfinite(gx).all(), (name, kw, gx)
            for key in ("betas", "d_pb", "d_be", "chosen_rewards", "rejected_rewards"):
                assert torch.isfinite(stats[key]).all(), (name, kw, key)
            ref_losses, ref_stats, ref_grads = run_with_grads(
                reference_multi_negative_loss, inputs, torch.float64, **kw
            )
            # float32 spacing at 1e4 is ~1e-3, so sigmoid/softmax arguments of size 1e4 carry ~5e-4 of rounding
            tol = 1e-9 if dtype == torch.float64 else 3e-3
            assert_close(losses, ref_losses, tol, tol, f"{name} {kw} losses")
            for gx, rx in zip(grads, ref_grads):
                if rx is not None:
                    assert_close(gx, rx, tol, tol, f"{name} {kw} grads")
            assert torch.equal(stats["boundary_mask"], ref_stats["boundary_mask"])


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
def test_low_precision_inputs(fast, objective, dtype):
    inputs = make_batch(9, 6, seed=21, dtype=dtype)  # values exactly representable in dtype
    # bf16 values are exact in float32, and the computation runs in float32 (losses are float32): same tolerance
    tol = 1e-5
    for selection, dyn in itertools.product((True, False), (True, False)):
        kw = {"objective": objective, "boundary_selection": selection, "dynamic_beta": dyn}
        losses, stats, grads = run_with_grads(fast, inputs, dtype, **kw)
        assert losses.dtype == torch.float32, losses.dtype
        assert torch.isfinite(losses).all()
        for gx in grads:
            assert gx.dtype == dtype and torch.isfinite(gx).all()
        ref_losses, ref_stats, ref_grads = run_with_grads(reference_multi_negative_loss, inputs, torch.float64, **kw)
        assert torch.equal(stats["boundary_mask"], ref_stats["boundary_mask"])
        assert_close(losses, ref_losses, tol, tol, f"{dtype} {kw} losses")
        for gx, rx in zip(grads, ref_grads):
            if rx is not None:
                # the gradient itself is rounded to the input dtype
                assert_close(gx, rx, 1e-2 if dtype == torch.bfloat16 else 1e-5, tol, f"{dtype} {kw} grads")


def test_float64_in_float64_out(fast):
    inputs = make_batch(3, 4, seed=0)
    losses, stats = fast(*inputs)
    assert losses.dtype == torch.float64 and losses.shape == (3,)
    assert stats["betas"].shape == (3, 4) and stats["used_clustering"].shape == (3,)


# ---------------------------------------------------------------------------------- baselines and errors


@pytest.mark.parametrize("objective", ["dmpo", "sdpo"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_k1_equals_dpo(fast, objective, dtype):
    chosen, rejected, ref_chosen, ref_rejected = make_batch(12, 1, seed=4, dtype=dtype)
    beta = 0.3
    r_plus, r_1 = chosen - ref_chosen, rejected[:, 0] - ref_rejected[:, 0]
    dpo = -F.logsigmoid(beta * (r_plus - r_1))
    for selection in (True, False):
        xs = [t.to(dtype) for t in (chosen, rejected, ref_chosen, ref_rejected)]
        losses, stats = fast(*xs, beta=beta, objective=objective, boundary_selection=selection, dynamic_beta=False)
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        torch.testing.assert_close(losses.double(), dpo, rtol=tol, atol=tol)
        assert stats["boundary_mask"].all() and stats["selected_mask"].all()


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_both_switches_off_is_the_plain_baseline(fast, objective):
    chosen, rejected, ref_chosen, ref_rejected = make_batch(10, 6, seed=8)
    beta = 0.6
    if objective == "dmpo":
        z = beta * ((chosen - ref_chosen)[:, None] - (rejected - ref_rejected)).mean(1)
    elif objective == "sdpo":
        z = -torch.logsumexp(beta * ((rejected - ref_rejected) - (chosen - ref_chosen)[:, None]), dim=1)
    else:
        z = beta * (chosen.exp()[:, None] - rejected.exp()).sum(1)
    plain = -F.logsigmoid(z)
    losses, stats = fast(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        beta=beta,
        objective=objective,
        boundary_selection=False,
        dynamic_beta=False,
    )
    torch.testing.assert_close(losses, plain, rtol=1e-12, atol=1e-12)
    assert stats["selected_mask"].all()
    assert torch.equal(stats["betas"], torch.full_like(stats["betas"], beta))


def test_mppo_ignores_reference(fast):
    chosen, rejected, ref_chosen, ref_rejected = make_batch(6, 5, seed=9)
    with_ref, s1 = fast(chosen, rejected, ref_chosen, ref_rejected, objective="mppo")
    without, s2 = fast(chosen, rejected, None, None, objective="mppo")
    torch.testing.assert_close(with_ref, without, rtol=0, atol=0)
    _, s3 = fast(chosen, rejected, None, None, objective="mppo", beta=0.7)
    torch.testing.assert_close(s3["chosen_rewards"], 0.7 * chosen, rtol=1e-15, atol=0)
    compare(fast, (chosen, rejected, None, None), objective="mppo")


@pytest.mark.parametrize("objective", ["dmpo", "sdpo"])
def test_missing_reference_raises(fast, objective):
    chosen, rejected, ref_chosen, ref_rejected = make_batch(2, 3, seed=0)
    with pytest.raises(ValueError):
        fast(chosen, rejected, None, None, objective=objective)
    with pytest.raises(ValueError):
        fast(chosen, rejected, None, ref_rejected, objective=objective)
    with pytest.raises(ValueError):
        fast(chosen, rejected, ref_chosen, None, objective=objective)


def test_unknown_objective_raises(fast):
    chosen, rejected, ref_chosen, ref_rejected = make_batch(2, 3, seed=0)
    for bad in ("dpo2", "DMPO", "ipo", ""):
        with pytest.raises(ValueError, match=r"expected one of \('dmpo', 'sdpo', 'mppo'\)"):
            fast(chosen, rejected, ref_chosen, ref_rejected, objective=bad)
    with pytest.raises(TypeError, match="loss_type"):  # one meaning per name: `loss_type` is TRL's list
        fast(chosen, rejected, ref_chosen, ref_rejected, loss_type="dmpo")


def test_default_beta_is_trl_dpo_config_beta(fast, tmp_path):
    """One beta default everywhere: `DPOConfig`'s (0.1), which the loss function uses when given none."""
    from trl import DPOConfig

    chosen, rejected, ref_chosen, ref_rejected = make_batch(4, 3, seed=5)
    default_beta = DPOConfig(str(tmp_path), bf16=False).beta
    for objective in OBJECTIVE_NAMES:
        refs = (None, None) if objective == "mppo" else (ref_chosen, ref_rejected)
        implicit, _ = fast(chosen, rejected, *refs, objective=objective)
        explicit, _ = fast(chosen, rejected, *refs, objective=objective, beta=default_beta)
        other, _ = fast(chosen, rejected, *refs, objective=objective, beta=1.0)
        torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)
        assert not torch.allclose(implicit, other)


def test_objective_registry_decides_names_and_the_reference(tmp_path):
    """The registry is where the config's choices, the display names and the need for a reference come from."""
    import dataclasses
    import types

    from trl_dynamicpo import DynamicPOConfig
    from trl_dynamicpo.losses import OBJECTIVES, uses_reference_model
    from trl_dynamicpo.variants import OBJECTIVE_NAMES as DISPLAY

    assert tuple(OBJECTIVES) == OBJECTIVE_NAMES
    assert DISPLAY == {"dmpo": "DMPO", "sdpo": "S-DPO", "mppo": "MPPO"}
    field = {f.name: f for f in dataclasses.fields(DynamicPOConfig)}["multi_negative_loss"]
    assert field.metadata["choices"] == list(OBJECTIVE_NAMES)
    for name in OBJECTIVE_NAMES:
        assert f"'{name}' ({DISPLAY[name]}" in field.metadata["help"]
    needs = {
        (name, free): uses_reference_model(types.SimpleNamespace(multi_negative_loss=name, reference_free=free))
        for name in OBJECTIVE_NAMES
        for free in (False, True)
    }
    assert needs == {("dmpo", False): True, ("sdpo", False): True, ("mppo", False): False,
                     ("dmpo", True): False, ("sdpo", True): False, ("mppo", True): False}  # fmt: skip
    # A DynamicPOConfig reads the same way; an unknown objective is refused with the choices.
    assert not uses_reference_model(DynamicPOConfig(str(tmp_path), bf16=False, multi_negative_loss="mppo"))
    assert uses_reference_model(DynamicPOConfig(str(tmp_path), bf16=False))
    with pytest.raises(ValueError, match="'dmpo', 'sdpo', 'mppo'"):
        uses_reference_model(types.SimpleNamespace(multi_negative_loss="ipo"))


def test_reward_accuracy_and_rewards(fast):
    # row 0: chosen reward above every negative; row 1: one negative above; row 2: tie (not "above")
    chosen = torch.tensor([-1.0, -1.0, -1.0], dtype=torch.float64)
    rejected = torch.tensor([[-3.0, -4.0], [-3.0, -0.5], [-1.0, -4.0]], dtype=torch.float64)
    ref_chosen = torch.tensor([-2.0, -2.0, -2.0], dtype=torch.float64)
    ref_rejected = torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [-2.0, -2.0]], dtype=torch.float64)
    (_, stats, _), _ = compare(fast, (chosen, rejected, ref_chosen, ref_rejected), beta=2.0)
    assert stats["reward_accuracy"].tolist() == [1.0, 0.0, 0.0]
    assert stats["chosen_rewards"].tolist() == [2.0, 2.0, 2.0]
    assert stats["rejected_rewards"].tolist() == [[-2.0, -4.0], [-2.0, 3.0], [2.0, -4.0]]


def test_boundary_grad_share_stays_defined_when_the_loss_saturates(fast):
    # DMPO with selection off: dL/dp_j is proportional to beta_j, so the share is the boundary betas' share of all
    # betas, whatever the size of the common sigmoid factor (here it underflows: the loss is 0 in float64).
    p_pos = torch.tensor([-1.0], dtype=torch.float64)
    p_neg = torch.tensor([[-0.5, -3.0, -9.0]], dtype=torch.float64)
    losses, stats = fast(
        p_pos, p_neg, torch.tensor([-1000.0], dtype=torch.float64), p_neg.clone(), beta=1.0, boundary_selection=False
    )
    assert losses.item() == 0.0
    betas = stats["betas"][0]
    expected = (betas * stats["boundary_mask"][0]).sum() / betas.sum()
    torch.testing.assert_close(stats["boundary_grad_share"][0], expected)
    assert 0.0 < expected.item() < 1.0


# ------------------------------------------------------------------- label smoothing, reference-free, NLL term


@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
@pytest.mark.parametrize("boundary_selection", [True, False], ids=["select", "allneg"])
@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_label_smoothing_matches_reference(fast, objective, boundary_selection, label_smoothing):
    inputs = make_batch(9, 5, seed=3000)
    kwargs = dict(objective=objective, boundary_selection=boundary_selection, label_smoothing=label_smoothing)
    compare(fast, inputs, **kwargs)
    compare(fast, inputs, dtype=torch.float32, rtol=1e-5, atol=1e-5, **kwargs)


@pytest.mark.parametrize("objective", ["dmpo", "sdpo"])
def test_label_smoothing_at_k1_is_conservative_dpo(fast, objective):
    chosen, rejected, ref_chosen, ref_rejected = make_batch(12, 1, seed=5)
    beta, eps = 0.3, 0.2
    z = beta * ((chosen - ref_chosen) - (rejected[:, 0] - ref_rejected[:, 0]))
    cdpo = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    losses, _ = fast(chosen, rejected, ref_chosen, ref_rejected, beta=beta, objective=objective,
                     dynamic_beta=False, label_smoothing=eps)  # fmt: skip
    torch.testing.assert_close(losses, cdpo, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [-0.1, 0.5, 1.0])
def test_label_smoothing_out_of_range_raises(fast, bad):
    inputs = make_batch(2, 3, seed=0)
    with pytest.raises(ValueError, match="label_smoothing"):
        fast(*inputs, label_smoothing=bad)


@pytest.mark.parametrize("dynamic_beta", [True, False], ids=["dynbeta", "fixbeta"])
@pytest.mark.parametrize("boundary_selection", [True, False], ids=["select", "allneg"])
@pytest.mark.parametrize("objective", ["dmpo", "sdpo"])
def test_reference_free_matches_reference(fast, objective, boundary_selection, dynamic_beta):
    chosen, rejected, ref_chosen, ref_rejected = make_batch(9, 5, seed=4000)
    kwargs = dict(objective=objective, boundary_selection=boundary_selection, dynamic_beta=dynamic_beta)
    compare(fast, (chosen, rejected, None, None), reference_free=True, **kwargs)
    # Reference-free is exactly "the reference log-probs are zero", and reference log-probs passed are ignored.
    free, _ = fast(chosen, rejected, None, None, reference_free=True, **kwargs)
    ignored, _ = fast(chosen, rejected, ref_chosen, ref_rejected, reference_free=True, **kwargs)
    zeros, _ = fast(chosen, rejected, torch.zeros_like(chosen), torch.zeros_like(rejected), **kwargs)
    torch.testing.assert_close(free, zeros, rtol=0, atol=0)
    torch.testing.assert_close(ignored, zeros, rtol=0, atol=0)


def test_chosen_nll_matches_reference():
    from reference_losses import reference_chosen_nll

    from trl_dynamicpo.losses import chosen_nll_loss

    g = torch.Generator().manual_seed(11)
    lengths = [3, 1, 7, 4]
    tokens = [(-torch.rand(n, generator=g, dtype=torch.float64) * 5).requires_grad_(True) for n in lengths]
    expected = reference_chosen_nll([list(t) for t in tokens])
    fast_value = chosen_nll_loss(torch.stack([t.sum() for t in tokens]), torch.tensor(lengths))
    torch.testing.assert_close(fast_value, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(fast_value, tokens)
    ref_grads = torch.autograd.grad(reference_chosen_nll([list(t) for t in tokens]), tokens)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("objective", OBJECTIVE_NAMES)
def test_objective_weights_are_the_logit_gradient_up_to_a_row_factor(objective):
    """Every `OBJECTIVES` entry returns |dz/ds_j| on the selected negatives, up to one positive factor per row."""
    from trl_dynamicpo.losses import OBJECTIVES

    chosen, rejected, _, _ = make_batch(6, 5, seed=12)
    g = torch.Generator().manual_seed(12)
    betas = torch.rand(6, 5, generator=g, dtype=torch.float64) + 0.5
    selected = torch.rand(6, 5, generator=g) < 0.6
    selected[:, 0] = True
    betas = torch.where(selected, betas, 0.0)
    scores = rejected.clone().requires_grad_(True)
    logit, weights = OBJECTIVES[objective].fn(chosen, scores, betas, selected)
    (dz,) = torch.autograd.grad(logit.sum(), scores)
    dz, weights = dz.abs().masked_fill(~selected, 0.0), weights.masked_fill(~selected, 0.0)
    ratio = dz[:, :1] / weights[:, :1]
    torch.testing.assert_close(dz, weights * ratio, rtol=1e-10, atol=1e-300)
    assert (ratio > 0).all()
