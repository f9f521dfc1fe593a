"""Unbiased estimators of G and N from streaming sums, and their delete-one-group jackknife.

Pure Python (no torch, no numpy): everything here works on a handful of float64 scalars, so
``predict``/``check`` can re-derive intervals from a JSON artifact in microseconds.

Notation (docs/theory.md §2; [LMA21] Def. 5.1): k batch gradients g_1..g_k of batch size B, drawn
independently at one fixed x. With S = Σ g_i and Q = Σ ‖g_i‖²::

    N̂ = (Q − ‖S‖²/k) / (k − 1)        unbiased for N^B = Tr Σ^B
    Ĝ = ‖S/k‖² − N̂/k                  unbiased for G = ‖∇L‖²  (‖ḡ‖² alone is biased up by N^B/k)

The k batches are split into m groups; group j keeps its own sum S_j, its Q_j and its count k_j.
All we need is the m×m Gram matrix ⟨S_a, S_b⟩ and the Q_j: leaving group j out gives
‖S − S_j‖² = ‖S‖² − 2⟨S, S_j⟩ + ‖S_j‖², so every leave-one-group-out estimate is exact and cheap.

Traps:
- The loss must be the *mean* over the batch, not the sum, or G and N are off by B² (BackPACK's
  docs warn about the same mean-vs-sum trap).
- Ĝ can be ≤ 0 when the signal is buried in noise. That is a result ("no signal detected at this
  precision"), reported as such, never clamped.
- ``Q − ‖S‖²/k`` cancels badly when NSR ≪ 1: keep the sums in float64.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from bscrit.errors import UsageError

#: Two-sided confidence level of every interval bscrit reports.
LEVEL = 0.95


# ----------------------------------------------------------------------------------------------
# Student t quantile (no scipy): regularised incomplete beta by Lentz's continued fraction.
# ----------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz method)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=1024)  # adaptive runs ask for the same df at every check
def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (bisection on :func:`t_cdf`, |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------------------------
# Point estimators
# ----------------------------------------------------------------------------------------------


def estimate_g_n(sum_norm_sq: float, q: float, k: int) -> tuple[float, float]:
    """Unbiased (Ĝ, N̂) from ‖S‖², Q and k (docs/theory.md §2; [LMA21] §5).

    Args:
        sum_norm_sq: ‖S‖² with S = Σᵢ gᵢ, the sum of the k batch gradients.
        q: Q = Σᵢ ‖gᵢ‖².
        k: number of batches, at least 2.

    Returns:
        ``(G_hat, N_hat)`` with ``N̂ = (Q − ‖S‖²/k)/(k − 1)`` and ``Ĝ = ‖S/k‖² − N̂/k``.
    """
    if k < 2:
        raise ValueError(f"need at least 2 batches to estimate N, got k={k}")
    n_hat = (q - sum_norm_sq / k) / (k - 1)
    g_hat = sum_norm_sq / (k * k) - n_hat / k
    return g_hat, n_hat


# ----------------------------------------------------------------------------------------------
# Group sums and the jackknife
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSums:
    """The sufficient statistics of one parameter set, per group.

    Attributes:
        gram: m×m matrix of ⟨S_a, S_b⟩ (float64), S_j the sum of the batch gradients of group j.
        q: Q_j = Σ_{i in group j} ‖gᵢ‖².
        counts: k_j, the number of batches in group j.
    """

    gram: tuple[tuple[float, ...], ...]
    q: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def m(self) -> int:
        return len(self.counts)

    @property
    def k(self) -> int:
        return sum(self.counts)

    def __add__(self, other: GroupSums) -> GroupSums:
        """Sums of a union of disjoint parameter sets (Gram matrices and Q add)."""
        if self.counts != other.counts:
            raise ValueError("cannot add GroupSums over different batch groups")
        gram = tuple(
            tuple(x + y for x, y in zip(ra, rb, strict=True))
            for ra, rb in zip(self.gram, other.gram, strict=True)
        )
        q = tuple(x + y for x, y in zip(self.q, other.q, strict=True))
        return GroupSums(gram, q, self.counts)

    @staticmethod
    def zeros(counts: Sequence[int]) -> GroupSums:
        m = len(counts)
        return GroupSums(tuple((0.0,) * m for _ in range(m)), (0.0,) * m, tuple(counts))

    def full(self) -> tuple[float, float]:
        """(Ĝ, N̂) from all k batches."""
        s2 = sum(sum(row) for row in self.gram)
        return estimate_g_n(s2, sum(self.q), self.k)

    def leave_one_out(self) -> tuple[list[float], list[float]]:
        """(Ĝ_(j), N̂_(j)) for j = 1..m, each from the k − k_j batches outside group j."""
        s2 = sum(sum(row) for row in self.gram)
        q, k = sum(self.q), self.k
        gs: list[float] = []
        ns: list[float] = []
        for j in range(self.m):
            s2_j = s2 - 2.0 * sum(self.gram[j]) + self.gram[j][j]
            g, n = estimate_g_n(s2_j, q - self.q[j], k - self.counts[j])
            gs.append(g)
            ns.append(n)
        return gs, ns


def jackknife_se(loo: Sequence[float]) -> float:
    """Delete-one-group jackknife standard error: sqrt((m−1)/m · Σ (θ_(j) − θ̄)²)."""
    m = len(loo)
    if m < 2:
        return math.nan
    mean = sum(loo) / m
    return math.sqrt((m - 1) / m * sum((x - mean) * (x - mean) for x in loo))  # x*x: no Overflow


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its jackknife standard error and 95% interval (Student t, m−1 df)."""

    value: float
    se: float
    ci95: tuple[float, float]


def interval(value: float, loo: Sequence[float], level: float = LEVEL) -> Estimate:
    """Jackknife interval ``value ± t_{(1+level)/2, m−1} · se`` around a point estimate."""
    se = jackknife_se(loo)
    t = t_quantile(0.5 + level / 2.0, len(loo) - 1)
    return Estimate(value, se, (value - t * se, value + t * se))


def nsr_interval(
    g: float, n: float, g_loo: Sequence[float], n_loo: Sequence[float], level: float = LEVEL
) -> tuple[float, tuple[float, float]]:
    """NSR = N/G with a 95% interval.

    NSR is a ratio whose denominator may sit near zero, where a jackknife of N/G itself is
    meaningless. The interval is therefore built on the signal-to-noise ratio G/N, which is smooth
    through G = 0 and nearly linear in the sums, and then inverted (N/G is monotone in G/N > 0).
    When the interval of G/N reaches 0 or below, the upper end of NSR is ``inf``: no upper bound at
    this precision. Since B* = C²B(1 + NSR) is monotone in NSR, the same interval carries to B*.

    Returns:
        ``(nsr, (lo, hi))``; ``nsr`` is ``inf`` when Ĝ ≤ 0 (no signal detected).
    """
    if n <= 0:
        raise ValueError(f"N must be positive to form a noise-to-signal ratio, got {n}")
    snr = g / n
    snr_loo = [gj / nj for gj, nj in zip(g_loo, n_loo, strict=True)]
    est = interval(snr, snr_loo, level)
    lo_snr, hi_snr = est.ci95
    nsr = 1.0 / snr if snr > 0 else math.inf
    nsr_lo = 1.0 / hi_snr if hi_snr > 0 else math.inf
    nsr_hi = 1.0 / lo_snr if lo_snr > 0 else math.inf
    return nsr, (nsr_lo, nsr_hi)


@dataclass(frozen=True)
class NoiseStats:
    """G, N and NSR of one parameter set, with jackknife errors (docs/theory.md §2)."""

    G: Estimate
    N: Estimate
    nsr: float
    nsr_ci95: tuple[float, float]
    jackknife_G: tuple[float, ...]
    jackknife_N: tuple[float, ...]
    k: int
    m: int

    @property
    def signal_detected(self) -> bool:
        """False when Ĝ ≤ 0 or its 95% interval reaches 0: B* then has no upper bound."""
        return self.G.ci95[0] > 0


def noise_stats_from_jackknife(
    g: float, n: float, g_loo: Sequence[float], n_loo: Sequence[float], k: int
) -> NoiseStats:
    """Assemble :class:`NoiseStats` from point values and leave-one-group-out values."""
    nsr, nsr_ci = nsr_interval(g, n, g_loo, n_loo)
    return NoiseStats(
        G=interval(g, g_loo),
        N=interval(n, n_loo),
        nsr=nsr,
        nsr_ci95=nsr_ci,
        jackknife_G=tuple(g_loo),
        jackknife_N=tuple(n_loo),
        k=k,
        m=len(g_loo),
    )


def noise_stats(sums: GroupSums) -> NoiseStats:
    """Ĝ, N̂, NSR and their jackknife intervals from one parameter set's group sums."""
    if sums.m < 2:
        raise ValueError(f"the jackknife needs at least 2 groups, got {sums.m}")
    g, n = sums.full()
    g_loo, n_loo = sums.leave_one_out()
    return noise_stats_from_jackknife(g, n, g_loo, n_loo, sums.k)


def pool(stats: Sequence[NoiseStats]) -> NoiseStats:
    """Pool measurements of several checkpoints: mean of G and N ([LMA21] F.2 averaged epochs).

    The pooled leave-one-out value j is the mean over checkpoints of their value j: deleting
    "slice j" of every checkpoint's groups is a grouped jackknife of the pooled estimator, valid
    because the checkpoints' batches are independent. All checkpoints need the same m.
    """
    if not stats:
        raise ValueError("nothing to pool")
    if len(stats) == 1:
        return stats[0]
    ms = {s.m for s in stats}
    if len(ms) != 1:
        raise ValueError(f"cannot pool measurements with different group counts {sorted(ms)}")
    c = len(stats)
    g = sum(s.G.value for s in stats) / c
    n = sum(s.N.value for s in stats) / c
    g_loo = [sum(s.jackknife_G[j] for s in stats) / c for j in range(stats[0].m)]
    n_loo = [sum(s.jackknife_N[j] for s in stats) / c for j in range(stats[0].m)]
    return noise_stats_from_jackknife(g, n, g_loo, n_loo, sum(s.k for s in stats))


def finite_population_factor(n: int, b: int) -> float:
    """(n − B)/(n − 1): N^B = T₁ · (n − B)/(B (n − 1)) for B distinct examples ([SDBD21] eq. 22)."""
    if n <= 1:
        return 1.0
    return (n - b) / (n - 1)


def per_example_trace(n_b: float, n: int, b: int) -> float:
    """T₁ = (1/n) Σ ‖∇ℓᵢ − ∇L‖² recovered from N^B: T₁ = N^B · B (n − 1)/(n − B)."""
    f = finite_population_factor(n, b)
    if f <= 0:
        return math.nan  # B = n: every batch is the full dataset, N^B = 0 carries no T₁
    return n_b * b / f


# ----------------------------------------------------------------------------------------------
# The per-example estimator (bscrit.engine.per_example collects C_j; docs/theory.md §2)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerExampleStats:
    """G, N^B (per-example estimator) and T₁ with jackknife intervals, for one parameter set."""

    noise: NoiseStats
    T1: Estimate
    jackknife_T1: tuple[float, ...]


def _t1(u: float, k: int, n: int, b: int) -> float:
    """T̂₁ = (n−1)/n · U / ((B−1) k), U = Σ_batches Σᵢ ‖∇ℓᵢ − ḡ‖²."""
    return (n - 1) / n * u / ((b - 1) * k)


def _n_of_t1(t1: float, n: int, b: int) -> float:
    """N^B = T₁ (n − B)/(B (n − 1)) ([SDBD21] eq. 22)."""
    return t1 * finite_population_factor(n, b) / b if n > 1 else 0.0


def per_example_stats(sums: GroupSums, c: Sequence[float], n: int, b: int) -> PerExampleStats:
    """Ĝ, N̂^B, NSR and T̂₁ with delete-one-group jackknife intervals (see module docstring).

    Args:
        sums: the batch estimator's group sums of the parameter set (Gram of S_j, Q_j, k_j).
        c: per group, C_j = Σ_{batches in j} Σᵢ ‖cᵢ‖² over the set's tensors (cᵢ = ∇ℓᵢ/B).
        n: dataset size.
        b: batch size B (≥ 2).
    """
    if b < 2:
        raise UsageError("the per-example estimator needs a batch size B >= 2")
    if len(c) != sums.m:
        raise ValueError(f"{len(c)} per-example group sums for {sums.m} groups")
    m, k = sums.m, sums.k
    u = [b * b * cj - b * qj for cj, qj in zip(c, sums.q)]
    u_all = sum(u)
    s2 = sum(sum(row) for row in sums.gram)
    t1 = _t1(u_all, k, n, b)
    nb = _n_of_t1(t1, n, b)
    g = s2 / (k * k) - nb / k
    g_loo, n_loo, t_loo = [], [], []
    for j in range(m):
        kj = k - sums.counts[j]
        s2_j = s2 - 2.0 * sum(sums.gram[j]) + sums.gram[j][j]
        t1_j = _t1(u_all - u[j], kj, n, b)
        n_j = _n_of_t1(t1_j, n, b)
        t_loo.append(t1_j)
        n_loo.append(n_j)
        g_loo.append(s2_j / (kj * kj) - n_j / kj)
    return PerExampleStats(
        noise=noise_stats_from_jackknife(g, nb, g_loo, n_loo, k),
        T1=interval(t1, t_loo),
        jackknife_T1=tuple(t_loo),
    )


@dataclass(frozen=True)
class PerExampleRaw:
    """What a per-example run adds to the batch estimator's sums: C[j][t]."""

    c: list[list[float]]

    def set_c(self, indices: Sequence[int]) -> list[float]:
        """Per-group C_j of a parameter set given by tensor indices."""
        return [sum(row[t] for t in indices) for row in self.c]


def pool_t1(stats: Sequence[PerExampleStats]) -> Estimate:
    """T₁ pooled over checkpoints like G and N (mean; slice-j jackknife, see :func:`pool`)."""
    if len(stats) == 1:
        return stats[0].T1
    c = len(stats)
    m = len(stats[0].jackknife_T1)
    value = sum(s.T1.value for s in stats) / c
    loo = [sum(s.jackknife_T1[j] for s in stats) / c for j in range(m)]
    return interval(value, loo)
