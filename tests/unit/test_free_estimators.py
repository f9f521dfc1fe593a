"""The free mode's estimators against brute force over shuffles of a small finite population.

A population of n per-example gradient vectors (numpy) stands for a training set at fixed
weights. A training step takes M disjoint slices of b examples from one shuffle; the exact
expectation over every shuffle (enumerated) and Monte-Carlo means over many shuffles (tolerance
from their standard error) are compared with G = ‖mean‖², N^b and T₁ of the population.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from bscrit.errors import UsageError
from bscrit.stats.free import (
    FreeStep,
    plain_step_estimate,
    pool_steps,
    step_blocks,
    step_estimate,
)
from bscrit.theory.formulas import critical_batch_size


def _population(n: int, d: int, seed: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d)
    return mean + spread * rng.normal(size=(n, d))


def _truth(pop: np.ndarray, b: int) -> dict[str, float]:
    n = len(pop)
    mu = pop.mean(axis=0)
    t1 = float(((pop - mu) ** 2).sum(axis=1).mean())
    return {"G": float(mu @ mu), "T1": t1, "N": t1 * (n - b) / (b * (n - 1))}


def _step_from_slices(pop: np.ndarray, idx: np.ndarray) -> FreeStep:
    """idx: (M, b) example indices → the step's sums, computed from the slice means."""
    h = pop[idx].mean(axis=1)  # (M, d) slice gradients
    hbar = h.mean(axis=0)
    return FreeStep(float((h**2).sum()), float(hbar @ hbar), idx.shape[0], idx.shape[1])


def _batch_stats(pop: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised over R shuffles: idx (R, M, b) → per-shuffle estimates, fixed and plain."""
    n = len(pop)
    _, m, b = idx.shape
    h = pop[idx].mean(axis=2)  # (R, M, d)
    hbar = h.mean(axis=1)
    s2 = ((h - hbar[:, None, :]) ** 2).sum(axis=(1, 2)) / (m - 1)
    hb2 = (hbar**2).sum(axis=1)
    return {
        "G": hb2 - s2 * (n - m * b) / (n * m),
        "N": s2 * (n - b) / n,
        "T1": s2 * b * (n - 1) / n,
        "G_plain": hb2 - s2 / m,
        "N_plain": s2,
    }


def test_step_estimate_matches_the_vectorised_formulas() -> None:
    pop = _population(30, 4, seed=0, spread=2.0)
    idx = np.random.default_rng(1).permutation(30)[:12].reshape(3, 4)
    est = step_estimate(_step_from_slices(pop, idx), 30)
    ref = _batch_stats(pop, idx[None])
    assert est.G == pytest.approx(float(ref["G"][0]), rel=1e-12)
    assert est.N_slice == pytest.approx(float(ref["N"][0]), rel=1e-12)
    assert est.T1 == pytest.approx(float(ref["T1"][0]), rel=1e-12)
    # N at B = Mb from T₁ ([SDBD21] eq. 22)
    assert est.N_batch == pytest.approx(est.T1 * (30 - 12) / (12 * 29), rel=1e-12)


def test_exactly_unbiased_over_every_shuffle() -> None:
    """n = 7, M = 3 slices of b = 2: the mean over all 7! shuffles equals G, N^b, T₁ exactly."""
    n, m, b = 7, 3, 2
    pop = _population(n, 3, seed=2, spread=1.5)
    perms = np.array(list(itertools.permutations(range(n))))[:, : m * b].reshape(-1, m, b)
    stats = _batch_stats(pop, perms)
    truth = _truth(pop, b)
    for key in ("G", "N", "T1"):
        assert stats[key].mean() == pytest.approx(truth[key], rel=1e-10), key
    # the plain forms are off by exactly the predicted amounts
    assert stats["N_plain"].mean() == pytest.approx(truth["N"] * n / (n - b), rel=1e-10)
    assert stats["G_plain"].mean() == pytest.approx(truth["G"] - truth["T1"] / (n - 1), rel=1e-10)


@pytest.mark.parametrize(("n", "m", "b"), [(40, 4, 5), (64, 2, 16), (50, 5, 10)])
def test_monte_carlo_unbiased_and_plain_forms_biased(n: int, m: int, b: int) -> None:
    """Many shuffles of a larger population: within 4 Monte-Carlo standard errors of the truth;
    the plain forms are off by their predicted bias, which is many standard errors here."""
    reps = 40_000
    pop = _population(n, 6, seed=n + m, spread=3.0)
    rng = np.random.default_rng(n * m)
    idx = np.argsort(rng.random((reps, n)), axis=1)[:, : m * b].reshape(reps, m, b)
    stats = _batch_stats(pop, idx)
    truth = _truth(pop, b)

    def close(x: np.ndarray, target: float) -> bool:
        se = x.std(ddof=1) / math.sqrt(len(x))
        return abs(x.mean() - target) < 4 * se + 1e-9 * abs(target)  # B = n: Ĝ is exact

    for key in ("G", "N", "T1"):
        assert close(stats[key], truth[key]), key
    plain_n, plain_g = truth["N"] * n / (n - b), truth["G"] - truth["T1"] / (n - 1)
    assert close(stats["N_plain"], plain_n)
    assert close(stats["G_plain"], plain_g)
    # the plain forms would fail the unbiasedness check above
    assert not close(stats["N_plain"], truth["N"])
    assert not close(stats["G_plain"], truth["G"])


def test_infinite_population_gives_the_plain_forms() -> None:
    step = FreeStep(sum_sq=10.0, mean_sq=2.0, slices=4, slice_size=8)
    est = step_estimate(step, None)
    g_plain, n_plain = plain_step_estimate(step)
    assert est.G == pytest.approx(g_plain)
    assert est.N_slice == pytest.approx(n_plain)
    assert est.N_batch == pytest.approx(n_plain / 4)


@pytest.mark.parametrize(("m", "b", "n"), [(1, 8, 100), (4, 0, 100), (4, 30, 100)])
def test_bad_steps_raise(m: int, b: int, n: int) -> None:
    with pytest.raises(UsageError):
        step_estimate(FreeStep(1.0, 0.1, m, b), n)


def _simulated_steps(pop: np.ndarray, m: int, b: int, count: int, seed: int) -> list[FreeStep]:
    rng = np.random.default_rng(seed)
    n = len(pop)
    out = []
    for t in range(count):
        idx = rng.permutation(n)[: m * b].reshape(m, b)
        s = _step_from_slices(pop, idx)
        out.append(FreeStep(s.sum_sq, s.mean_sq, m, b, step=t, examples_seen=t * m * b))
    return out


def test_pool_steps_values_and_b_star() -> None:
    pop = _population(200, 5, seed=3, spread=4.0)
    steps = _simulated_steps(pop, 4, 8, 60, seed=4)
    est = pool_steps(steps, 200)
    per = [step_estimate(s, 200) for s in steps]
    assert est.G.value == pytest.approx(sum(p.G for p in per) / 60)
    assert est.N.value == pytest.approx(sum(p.N_batch for p in per) / 60)
    assert est.nsr == pytest.approx(est.N.value / est.G.value)
    assert est.b_star == pytest.approx(critical_batch_size(32, est.nsr))
    assert est.b_star_ci95[0] <= est.b_star <= est.b_star_ci95[1]
    assert (est.steps, est.first_step, est.last_step, est.batch_size) == (60, 0, 59, 32)
    assert est.scope == "window" and est.blocks == 20
    d = est.to_dict()
    assert d["mode"] == "free" and d["b_star"] == pytest.approx(est.b_star)


def test_pool_steps_intervals_cover_the_truth() -> None:
    """Stationary steps (fixed weights): the 95% intervals of G and N^B cover the truth in about
    95% of 300 windows (binomial tolerance: at least 88%)."""
    n, m, b = 120, 4, 6
    pop = _population(n, 5, seed=5, spread=3.0)
    truth = _truth(pop, m * b)
    hits_g = hits_n = 0
    reps = 300
    for r in range(reps):
        est = pool_steps(_simulated_steps(pop, m, b, 40, seed=100 + r), n)
        hits_g += est.G.ci95[0] <= truth["G"] <= est.G.ci95[1]
        hits_n += est.N.ci95[0] <= truth["N"] <= est.N.ci95[1]
    assert hits_g / reps > 0.88 and hits_n / reps > 0.88, (hits_g, hits_n)


def test_step_blocks_use_the_relaxation_time() -> None:
    steps = list(range(0, 100))
    blocks, scope, _ = step_blocks(steps, tau=20.0)
    assert scope == "equilibrium" and len(blocks) == 5
    assert all(len(blk) == 20 for blk in blocks)
    blocks, scope, note = step_blocks(steps, tau=80.0)
    assert scope == "window" and len(blocks) == 20 and "2τ" in note
    blocks, scope, _ = step_blocks(list(range(5)), tau=None)
    assert scope == "window" and [len(x) for x in blocks] == [1] * 5
    with pytest.raises(UsageError):
        step_blocks([3], tau=None)


def test_pool_steps_no_signal_gives_unbounded_b_star() -> None:
    """Mean gradient 0: Ḡ's interval reaches 0 in about 95% of windows (at least 85% of 60), and
    then B*'s upper end is ∞."""
    rng = random.Random(0)
    pop = np.array([[rng.gauss(0, 1) for _ in range(4)] for _ in range(100)])
    pop -= pop.mean(axis=0)
    missed = 0
    for seed in range(60):
        est = pool_steps(_simulated_steps(pop, 2, 10, 30, seed=seed), 100)
        if not est.signal_detected:
            missed += 1
            assert est.b_star_ci95[1] == math.inf and est.nsr_ci95[1] == math.inf
    assert missed >= 51, missed
