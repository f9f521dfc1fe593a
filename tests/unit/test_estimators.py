"""Pure estimator math (no torch): t quantiles, unbiased G/N, jackknife bookkeeping."""

from __future__ import annotations

import math
import random

import pytest

from bscrit.stats.estimators import (
    GroupSums,
    estimate_g_n,
    finite_population_factor,
    interval,
    jackknife_se,
    noise_stats,
    nsr_interval,
    per_example_trace,
    pool,
    t_quantile,
)

# Reference values of Student's t quantiles (scipy.stats.t.ppf), to 8 digits.
T975 = {
    1: 12.70620474,
    2: 4.30265273,
    5: 2.57058184,
    9: 2.26215716,
    30: 2.04227246,
    200: 1.97189617,
}


@pytest.mark.parametrize("df,expected", sorted(T975.items()))
def test_t_quantile_matches_reference(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-7)


def test_t_quantile_symmetry_and_median() -> None:
    assert t_quantile(0.025, 9) == pytest.approx(-T975[9], rel=1e-7)
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-9)


def _vecs(k: int, d: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    mean = [rng.gauss(0, 1) for _ in range(d)]
    return [[mu + rng.gauss(0, 2) for mu in mean] for _ in range(k)]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _brute_g_n(gs: list[list[float]]) -> tuple[float, float]:
    """Textbook: N̂ = sample covariance trace, Ĝ = ‖mean‖² − N̂/k."""
    k, d = len(gs), len(gs[0])
    mean = [sum(g[i] for g in gs) / k for i in range(d)]
    n_hat = sum(sum((g[i] - mean[i]) ** 2 for i in range(d)) for g in gs) / (k - 1)
    return _dot(mean, mean) - n_hat / k, n_hat


def _group_sums(gs: list[list[float]], counts: list[int]) -> GroupSums:
    d = len(gs[0])
    sums, qs, start = [], [], 0
    for c in counts:
        block = gs[start : start + c]
        sums.append([sum(g[i] for g in block) for i in range(d)])
        qs.append(sum(_dot(g, g) for g in block))
        start += c
    gram = tuple(tuple(_dot(a, b) for b in sums) for a in sums)
    return GroupSums(gram, tuple(qs), tuple(counts))


def test_estimate_matches_textbook_covariance() -> None:
    gs = _vecs(12, 5, seed=1)
    s = [sum(g[i] for g in gs) for i in range(5)]
    got = estimate_g_n(_dot(s, s), sum(_dot(g, g) for g in gs), len(gs))
    assert got == pytest.approx(_brute_g_n(gs), rel=1e-12)


def test_leave_one_out_equals_recomputation_without_the_group() -> None:
    gs = _vecs(20, 4, seed=2)
    counts = [5, 5, 4, 3, 3]
    sums = _group_sums(gs, counts)
    g_loo, n_loo = sums.leave_one_out()
    start = 0
    for j, c in enumerate(counts):
        rest = gs[:start] + gs[start + c :]
        g_ref, n_ref = _brute_g_n(rest)
        assert g_loo[j] == pytest.approx(g_ref, rel=1e-10)
        assert n_loo[j] == pytest.approx(n_ref, rel=1e-10)
        start += c
    assert sums.full() == pytest.approx(_brute_g_n(gs), rel=1e-12)


def test_group_sums_add_over_disjoint_coordinates() -> None:
    gs = _vecs(10, 6, seed=3)
    counts = [4, 3, 3]
    a = _group_sums([g[:2] for g in gs], counts)
    b = _group_sums([g[2:] for g in gs], counts)
    assert (a + b).full() == pytest.approx(_group_sums(gs, counts).full(), rel=1e-12)


def test_jackknife_se_of_the_mean_is_the_standard_error() -> None:
    # For the sample mean, the jackknife s.e. equals s/sqrt(m) exactly.
    xs = [1.0, 4.0, 2.0, 8.0, 5.0]
    m = len(xs)
    mean = sum(xs) / m
    loo = [(sum(xs) - x) / (m - 1) for x in xs]
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / (m - 1))
    assert jackknife_se(loo) == pytest.approx(s / math.sqrt(m), rel=1e-12)
    est = interval(mean, loo)
    t = t_quantile(0.975, m - 1)
    assert est.ci95 == pytest.approx((mean - t * s / math.sqrt(m), mean + t * s / math.sqrt(m)))


def test_nsr_interval_unbounded_when_signal_is_buried() -> None:
    # G/N interval straddles 0 -> NSR upper end infinite, point estimate infinite when G <= 0.
    nsr, (lo, hi) = nsr_interval(-0.1, 10.0, [-0.3, 0.2, 0.1, -0.2], [9.0, 11.0, 10.0, 10.5])
    assert nsr == math.inf and hi == math.inf and 0 < lo < math.inf
    nsr, (lo, hi) = nsr_interval(2.0, 10.0, [1.9, 2.1, 2.0, 2.05], [9.8, 10.1, 10.0, 10.2])
    assert nsr == pytest.approx(5.0) and lo < 5.0 < hi < math.inf


def test_noise_stats_and_pooling() -> None:
    gs = _vecs(40, 3, seed=4)
    a = noise_stats(_group_sums(gs[:20], [5, 5, 5, 5]))
    b = noise_stats(_group_sums(gs[20:], [5, 5, 5, 5]))
    p = pool([a, b])
    assert p.G.value == pytest.approx((a.G.value + b.G.value) / 2)
    assert p.N.value == pytest.approx((a.N.value + b.N.value) / 2)
    assert p.jackknife_G[2] == pytest.approx((a.jackknife_G[2] + b.jackknife_G[2]) / 2)
    assert p.k == 40 and p.m == 4


def test_finite_population_factor_and_t1() -> None:
    assert finite_population_factor(100, 10) == pytest.approx(90 / 99)
    assert per_example_trace(2.0, 100, 10) == pytest.approx(2.0 * 10 * 99 / 90)
    assert math.isnan(per_example_trace(1.0, 10, 10))
