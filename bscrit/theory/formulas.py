"""The formulas of [LMA21] §5, [McC18] and [SDBD21] (pure: no torch, no numpy).

docs/theory.md §4 and §7. With NSR = N^B/G measured at batch size B and a closeness constant C > 1
(the paper uses C² = 2; :func:`check_c2` is the one check of C²):

- Thm 5.2 (ii) [LMA21]: if NSR < 1/(C² − 1), the SGD equilibrium is not C-close to its SDE: the SDE
  approximation is certified to fail at this setting.
- Thm 5.6 [LMA21], eq. (15): LSR from (B, η) to (κB, κη) fails for κ > κ_max = C²(1 + NSR^B),
  so B* = C²(B + B·N^B/G) (exact) ≈ C²·B·NSR^B (the paper's figures, NSR ≫ 1).
- Thm 5.5 [LMA21], eq. (14): a run at B_L = κB certifies LSR failure from every base batch
  B < B_L(1 − (C² − 1) NSR^{B_L})/C², when (C² − 1) NSR^{B_L} < 1 (else it certifies nothing).
- B_simple = T₁/G [McC18], T₁ the per-example trace (docs/theory.md §1, [SDBD21] eq. 22).
- Implicit regularisation [SDBD21] eq. 22: the modified loss adds (η/4)G + (η/4)N^B; NSR is the
  ratio of the two terms.

:mod:`bscrit.theory.bounds` applies them to one measurement, with intervals.
"""

from __future__ import annotations

import math

from bscrit import boundary
from bscrit.errors import UsageError
from bscrit.stats.estimators import finite_population_factor, per_example_trace

#: C² of [LMA21]; C² = 2 matched the paper's "test error within 20% of the best" criterion.
DEFAULT_C2 = 2.0


def check_c2(c2: float) -> float:
    """C² must be > 1 (C > 1 in [LMA21] Def. 5.1)."""
    x, why = boundary.number_problem(c2, low=1.0, low_open=True)
    if why or x is None:
        raise UsageError(
            f"{{c2}} must be a number > 1 (C > 1 in [LMA21] Def. 5.1), got {boundary.short(c2)}",
            c2="c2",
        )
    return x


def sde_nsr_threshold(c2: float = DEFAULT_C2) -> float:
    """1/(C² − 1): below this NSR the SDE approximation is certified to fail [LMA21 Thm 5.2]."""
    return 1.0 / (check_c2(c2) - 1.0)


def sde_certified_invalid(nsr: float, c2: float = DEFAULT_C2) -> bool:
    """[LMA21] Thm 5.2 (ii): True when NSR < 1/(C² − 1) (SGD and SDE equilibria not C-close)."""
    return nsr < sde_nsr_threshold(c2)


def kappa_max(nsr: float, c2: float = DEFAULT_C2) -> float:
    """[LMA21] Thm 5.6, eq. (15): LSR fails for κ > C²(1 + NSR^B)."""
    return check_c2(c2) * (1.0 + nsr)


def critical_batch_size(batch_size: float, nsr: float, c2: float = DEFAULT_C2) -> float:
    """B* = κ_max·B = C²(B + B·N^B/G) [LMA21 Thm 5.6, exact]; ``inf`` when NSR is ``inf``."""
    return kappa_max(nsr, c2) * batch_size


def critical_batch_size_approx(batch_size: float, nsr: float, c2: float = DEFAULT_C2) -> float:
    """B* ≈ C²·B·NSR^B, the approximation of [LMA21] eq. (15) for NSR ≫ 1 (used in its Fig. 3)."""
    return check_c2(c2) * batch_size * nsr


def thm55_kappa_min(nsr_large: float, c2: float = DEFAULT_C2) -> float | None:
    """[LMA21] Thm 5.5 solved for κ: (C, κ)-LSI fails for κ > C²/(1 − (C² − 1) NSR^{B_L}).

    Eq. (14), NSR^{B_L} < (1 − 1/κ)/(C² − 1) − 1/κ, multiplied by κ(C² − 1), reads
    κ(1 − (C² − 1)NSR^{B_L}) > C². Returns None when (C² − 1)·NSR^{B_L} ≥ 1: no κ qualifies.
    """
    c2 = check_c2(c2)
    d = 1.0 - (c2 - 1.0) * nsr_large
    if not d > 0:
        return None
    return c2 / d


def thm55_lsi_fails(nsr_large: float, kappa: float, c2: float = DEFAULT_C2) -> bool:
    """[LMA21] Thm 5.5, eq. (14) as stated: NSR^{κB} < (1 − 1/κ)/(C² − 1) − 1/κ."""
    c2 = check_c2(c2)
    return nsr_large < (1.0 - 1.0 / kappa) / (c2 - 1.0) - 1.0 / kappa


def thm55_base_batch_below(
    large_batch_size: float, nsr_large: float, c2: float = DEFAULT_C2
) -> float | None:
    """[LMA21] Thm 5.5: B_L is past the critical batch of every base batch below the value returned.

    B < B_L(1 − (C² − 1) NSR^{B_L})/C² (= B_L/κ_min of :func:`thm55_kappa_min`). None when
    (C² − 1)·NSR^{B_L} ≥ 1: the theorem certifies nothing.
    """
    k = thm55_kappa_min(nsr_large, c2)
    return None if k is None else large_batch_size / k


def simple_noise_scale(n_b: float, g: float, dataset_size: int, batch_size: int) -> float | None:
    """B_simple = T₁/G [McC18], with T₁ = N^B·B(n − 1)/(n − B) (docs/theory.md §1, [SDBD21] eq. 22).

    ``inf`` when Ĝ ≤ 0 (no signal detected); None when B ≥ n (N^B carries no T₁).
    """
    t1 = per_example_trace(n_b, dataset_size, batch_size)
    if math.isnan(t1):
        return None
    return t1 / g if g > 0 else math.inf


def nsr_at_batch(nsr: float, batch_size: int, target: int, dataset_size: int) -> float | None:
    """NSR^{B'} from NSR^B: N^B = T₁(n − B)/(B(n − 1)), T₁ and G independent of B.

    docs/theory.md §1.

    NSR^{B'} = NSR^B · [(n − B')/B'] / [(n − B)/B] (0 when B' ≥ n). None when B ≥ n.
    """
    f_b = finite_population_factor(dataset_size, batch_size) / batch_size
    if f_b <= 0:
        return None
    f_t = max(0.0, finite_population_factor(dataset_size, target)) / target
    return nsr * f_t / f_b if math.isfinite(nsr) else math.inf


def implicit_regularisation(lr: float, g: float, n_b: float) -> tuple[float, float]:
    """The two implicit regularisers of SGD, [SDBD21] eq. 22: ((η/4)·G, (η/4)·N^B).

    The modified loss is C(ω) + (η/4)G + (η/4)N^B; the second term is the one the linear rule
    keeps fixed (η/B constant), and NSR is exactly the ratio of the two (docs/theory.md §7).
    """
    return lr / 4.0 * g, lr / 4.0 * n_b


def largest_power_of_two(lo: float, hi: float) -> int | None:
    """The largest power of two p with lo ≤ p ≤ hi (None when there is none, or hi is inf)."""
    if not math.isfinite(hi) or hi < 1:
        return None
    p = 1 << int(math.floor(math.log2(hi)))
    while p * 2 <= hi:  # guard against log2 rounding
        p *= 2
    while p > hi:
        p //= 2
    return p if p >= lo else None


def largest_multiple(lo: float, hi: float, k: int = 8) -> int | None:
    """The largest multiple of k in [lo, hi] (None when there is none, or hi is inf)."""
    if not math.isfinite(hi):
        return None
    x = int(math.floor(hi / k)) * k
    return x if x >= lo and x > 0 else None
