"""The per-example estimator of bscrit.stats.estimators on a finite population small enough to
enumerate.

A population of n = 12 vectors vᵢ of dimension 3 stands for the per-example gradients ∇ℓᵢ at one
x. Its exact quantities (docs/theory.md §1, [SDBD21] eq. 22):

    v̄ = (1/n) Σ vᵢ,   G = ‖v̄‖²,   T₁ = (1/n) Σ ‖vᵢ − v̄‖²,   N^B = T₁ (n − B) / (B (n − 1)),

N^B being the trace of the covariance of the mean of B distinct examples drawn uniformly without
replacement; it is also checked by enumerating every one of the C(n, B) batches. The estimator
is fed what bscrit.engine.per_example collects: the group sums of the batch means (Gram of S_j,
Q_j, k_j) and C_j = Σ_batches Σᵢ ‖vᵢ/B‖². Pure Python, no torch.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from bscrit.errors import UsageError
from bscrit.stats.estimators import (
    GroupSums,
    PerExampleRaw,
    PerExampleStats,
    finite_population_factor,
    interval,
    jackknife_se,
    per_example_stats,
    per_example_trace,
    pool_t1,
    t_quantile,
)

N_POP = 12
DIM = 3
B = 3


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _mean(vs: list[list[float]]) -> list[float]:
    return [sum(v[i] for v in vs) / len(vs) for i in range(len(vs[0]))]


def _sub(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b)]


def population(seed: int = 0) -> list[list[float]]:
    """n vectors around a common mean, so that G and N^B are of comparable size."""
    rng = random.Random(seed)
    mu = [1.0, -0.5, 0.5]
    return [[m + rng.gauss(0.0, 1.5) for m in mu] for _ in range(N_POP)]


POP = population()
VBAR = _mean(POP)
G_EXACT = _dot(VBAR, VBAR)
T1_EXACT = sum(_dot(_sub(v, VBAR), _sub(v, VBAR)) for v in POP) / N_POP


def nb_exact(b: int) -> float:
    return T1_EXACT * (N_POP - b) / (b * (N_POP - 1))


# ----------------------------------------------------------------------------------------------
# The exact finite-population quantities
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 2, 3, 5, 11, 12])
def test_closed_form_n_b_equals_enumeration_of_all_batches(b: int) -> None:
    means = [_mean([POP[i] for i in idx]) for idx in itertools.combinations(range(N_POP), b)]
    assert len(means) == math.comb(N_POP, b)
    # The batch mean is unbiased for v̄ ...
    assert _mean(means) == pytest.approx(VBAR, rel=1e-12, abs=1e-12)
    # ... and its variance trace is N^B = T₁ (n − B)/(B (n − 1)) (0 for the full batch).
    var_trace = sum(_dot(_sub(g, VBAR), _sub(g, VBAR)) for g in means) / len(means)
    assert var_trace == pytest.approx(nb_exact(b), rel=1e-12, abs=1e-12)
    # E‖ḡ‖² = G + N^B: why ‖ḡ‖² alone overestimates G.
    assert sum(_dot(g, g) for g in means) / len(means) == pytest.approx(
        G_EXACT + nb_exact(b), rel=1e-12
    )


@pytest.mark.parametrize("b", [1, 2, 3, 5, 11])
def test_finite_population_factor_and_per_example_trace_invert_n_b(b: int) -> None:
    assert finite_population_factor(N_POP, b) == pytest.approx((N_POP - b) / (N_POP - 1), rel=1e-15)
    assert T1_EXACT * finite_population_factor(N_POP, b) / b == pytest.approx(
        nb_exact(b), rel=1e-14
    )
    assert per_example_trace(nb_exact(b), N_POP, b) == pytest.approx(T1_EXACT, rel=1e-12)


def test_per_example_trace_edge_cases() -> None:
    assert finite_population_factor(N_POP, N_POP) == 0.0
    assert math.isnan(per_example_trace(0.0, N_POP, N_POP))  # B = n carries no T₁
    assert finite_population_factor(1, 1) == 1.0  # n ≤ 1: no correction
    assert per_example_trace(0.5, 1, 1) == 0.5


# ----------------------------------------------------------------------------------------------
# Building the estimator's input from batches
# ----------------------------------------------------------------------------------------------


def draw_batches(rng: random.Random, k: int, b: int = B) -> list[list[int]]:
    """k independent batches, each of b distinct indices drawn uniformly without replacement."""
    return [rng.sample(range(N_POP), b) for _ in range(k)]


def sums_of(
    groups: list[list[list[int]]], dims: range | list[int] = range(DIM), b: int = B
) -> tuple[GroupSums, list[float]]:
    """GroupSums of the batch means and C_j = Σ_batches Σᵢ ‖vᵢ/B‖² over the coordinates ``dims``."""
    svecs, qs, cs = [], [], []
    for batches in groups:
        s = [0.0] * len(dims)
        q = c = 0.0
        for idx in batches:
            g = [sum(POP[i][t] for i in idx) / b for t in dims]
            s = [x + y for x, y in zip(s, g)]
            q += _dot(g, g)
            c += sum((POP[i][t] / b) ** 2 for i in idx for t in dims)
        svecs.append(s)
        qs.append(q)
        cs.append(c)
    gram = tuple(tuple(_dot(a, bb) for bb in svecs) for a in svecs)
    return GroupSums(gram, tuple(qs), tuple(len(x) for x in groups)), cs


def direct_t1_g(batches: list[list[int]], b: int = B) -> tuple[float, float, float]:
    """Textbook (T̂₁, N̂^B, Ĝ) from the vectors of the given batches."""
    k = len(batches)
    u = 0.0
    total = [0.0] * DIM
    for idx in batches:
        vs = [POP[i] for i in idx]
        g = _mean(vs)
        u += sum(_dot(_sub(v, g), _sub(v, g)) for v in vs)
        total = [x + y for x, y in zip(total, g)]
    t1 = (N_POP - 1) / N_POP * u / ((b - 1) * k)
    nb = t1 * (N_POP - b) / (b * (N_POP - 1))
    gbar = [x / k for x in total]
    return t1, nb, _dot(gbar, gbar) - nb / k


def split(batches: list[list[int]], counts: list[int]) -> list[list[list[int]]]:
    out, start = [], 0
    for c in counts:
        out.append(batches[start : start + c])
        start += c
    return out


def test_per_example_stats_equals_textbook_and_leave_one_group_out() -> None:
    rng = random.Random(1)
    counts = [5, 4, 4, 3]
    batches = draw_batches(rng, sum(counts))
    groups = split(batches, counts)
    sums, c = sums_of(groups)
    st = per_example_stats(sums, c, N_POP, B)
    assert isinstance(st, PerExampleStats)
    t1, nb, g = direct_t1_g(batches)
    assert st.T1.value == pytest.approx(t1, rel=1e-10)
    assert st.noise.N.value == pytest.approx(nb, rel=1e-10)
    assert st.noise.G.value == pytest.approx(g, rel=1e-9, abs=1e-12)
    assert st.noise.k == sum(counts) and st.noise.m == len(counts)
    for j in range(len(counts)):
        rest = [x for i, grp in enumerate(groups) if i != j for x in grp]
        t1_j, nb_j, g_j = direct_t1_g(rest)
        assert st.jackknife_T1[j] == pytest.approx(t1_j, rel=1e-10)
        assert st.noise.jackknife_N[j] == pytest.approx(nb_j, rel=1e-10)
        assert st.noise.jackknife_G[j] == pytest.approx(g_j, rel=1e-9, abs=1e-12)
    # The intervals are the jackknife ones around the point values.
    t = t_quantile(0.975, len(counts) - 1)
    se = jackknife_se(st.jackknife_T1)
    assert st.T1.se == pytest.approx(se, rel=1e-12)
    assert st.T1.ci95 == pytest.approx((t1 - t * se, t1 + t * se), rel=1e-9)
    assert g > 0  # this draw has a detectable signal
    assert st.noise.nsr == pytest.approx(nb / g, rel=1e-9)


def test_per_example_stats_refuses_b_below_two_and_mismatched_groups() -> None:
    sums, c = sums_of(split(draw_batches(random.Random(2), 6), [3, 3]))
    with pytest.raises(UsageError, match="B >= 2"):
        per_example_stats(sums, c, N_POP, 1)
    with pytest.raises(ValueError, match="3 per-example group sums for 2 groups"):
        per_example_stats(sums, [*c, 0.0], N_POP, B)


# ----------------------------------------------------------------------------------------------
# Unbiasedness over repeated draws
# ----------------------------------------------------------------------------------------------

REPS = 600
COUNTS = [2, 2, 2, 2]


def _repeat() -> tuple[list[float], list[float], list[float], list[float]]:
    t1s, nbs, gs, naive = [], [], [], []
    for r in range(REPS):
        rng = random.Random(1000 + r)
        batches = draw_batches(rng, sum(COUNTS))
        sums, c = sums_of(split(batches, COUNTS))
        st = per_example_stats(sums, c, N_POP, B)
        t1s.append(st.T1.value)
        nbs.append(st.noise.N.value)
        gs.append(st.noise.G.value)
        naive.append(sum(sum(row) for row in sums.gram) / sums.k**2)  # ‖S/k‖², biased for G
    return t1s, nbs, gs, naive


@pytest.fixture(scope="module")
def repeated() -> tuple[list[float], list[float], list[float], list[float]]:
    return _repeat()


def _mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


@pytest.mark.parametrize(
    "which,exact",
    [(0, T1_EXACT), (1, nb_exact(B)), (2, G_EXACT)],
    ids=["T1", "N_B", "G"],
)
def test_per_example_estimates_are_unbiased(repeated, which: int, exact: float) -> None:
    mean, se = _mean_se(repeated[which])
    assert se > 0
    assert abs(mean - exact) < 4 * se, (mean, exact, se)


def test_unbiasedness_check_has_the_power_to_see_the_known_biases(repeated) -> None:
    # ‖S/k‖² is biased up by N^B/k, and T̂₁ without the (n − 1)/n factor by T₁/(n − 1): the
    # 4-standard-error test above would catch either, so passing it means something.
    mean, se = _mean_se(repeated[3])
    k = sum(COUNTS)
    assert abs(mean - (G_EXACT + nb_exact(B) / k)) < 4 * se
    assert abs(mean - G_EXACT) > 4 * se
    t1_mean, t1_se = _mean_se(repeated[0])
    assert abs(t1_mean * N_POP / (N_POP - 1) - T1_EXACT) > 4 * t1_se


# ----------------------------------------------------------------------------------------------
# PerExampleRaw and pool_t1
# ----------------------------------------------------------------------------------------------


def test_per_example_raw_set_c_sums_the_chosen_tensors() -> None:
    # Treat each coordinate as one "tensor": C[j][t] per group j and tensor t.
    groups = split(draw_batches(random.Random(3), 9), [3, 3, 3])
    per_tensor = [sums_of(groups, dims=[t])[1] for t in range(DIM)]
    raw = PerExampleRaw([[per_tensor[t][j] for t in range(DIM)] for j in range(3)])
    full_sums, full_c = sums_of(groups)
    assert raw.set_c(range(DIM)) == pytest.approx(full_c, rel=1e-14)
    assert raw.set_c([1]) == pytest.approx(per_tensor[1], rel=1e-14)
    sub_sums, sub_c = sums_of(groups, dims=[0, 2])
    assert raw.set_c([0, 2]) == pytest.approx(sub_c, rel=1e-14)
    # Estimates on a subset of tensors plus the rest add up (G, N^B and T₁ are traces).
    a = per_example_stats(sub_sums, raw.set_c([0, 2]), N_POP, B)
    bb = per_example_stats(sums_of(groups, dims=[1])[0], raw.set_c([1]), N_POP, B)
    full = per_example_stats(full_sums, raw.set_c(range(DIM)), N_POP, B)
    assert a.T1.value + bb.T1.value == pytest.approx(full.T1.value, rel=1e-12)
    assert a.noise.G.value + bb.noise.G.value == pytest.approx(full.noise.G.value, rel=1e-10)


def test_pool_t1_averages_values_and_leave_one_out() -> None:
    rng = random.Random(4)
    stats = [
        per_example_stats(*sums_of(split(draw_batches(rng, 8), [2, 2, 2, 2])), N_POP, B)
        for _ in range(3)
    ]
    assert pool_t1(stats[:1]) == stats[0].T1
    pooled = pool_t1(stats)
    value = sum(s.T1.value for s in stats) / 3
    loo = [sum(s.jackknife_T1[j] for s in stats) / 3 for j in range(4)]
    expected = interval(value, loo)
    assert pooled.value == pytest.approx(value, rel=1e-14)
    assert pooled.se == pytest.approx(jackknife_se(loo), rel=1e-12)
    assert pooled.ci95 == pytest.approx(expected.ci95, rel=1e-12)
    t = t_quantile(0.975, 3)
    assert pooled.ci95[1] - pooled.ci95[0] == pytest.approx(2 * t * jackknife_se(loo), rel=1e-9)
