"""The bounds of [LMA21] §5 and the readings built on them (pure: no torch, no numpy).

docs/theory.md §4 and §7. With NSR = N^B/G measured at batch size B and a closeness constant C > 1
(the paper uses C² = 2):

- Thm 5.2 (ii) [LMA21]: if NSR < 1/(C² − 1), the SGD equilibrium is not C-close to its SDE: the SDE
  approximation is certified to fail at this setting.
- Thm 5.6 [LMA21], eq. (15): LSR from (B, η) to (κB, κη) fails for κ > κ_max = C²(1 + NSR^B),
  so B* = C²(B + B·N^B/G) (exact) ≈ C²·B·NSR^B (the paper's figures, NSR ≫ 1).
- Thm 5.5 [LMA21], eq. (14): a run at B_L = κB certifies LSR failure from every base batch
  B < B_L(1 − (C² − 1) NSR^{B_L})/C², when (C² − 1) NSR^{B_L} < 1 (else it certifies nothing).
- B_simple = T₁/G [McC18], T₁ the per-example trace (docs/theory.md §1, [SDBD21] eq. 22).
- Implicit regularisation [SDBD21] eq. 22: the modified loss adds (η/4)G + (η/4)N^B; NSR is the
  ratio of the two terms.

Intervals: B* and its approximation are increasing in NSR, so their 95% intervals are the NSR
interval (built from the stored jackknife values by :func:`bscrit.stats.estimators.nsr_interval`) mapped
through the formula, never endpoints of G and N plugged in separately. When Ĝ's interval reaches 0
the NSR (and B*) has no upper bound at this precision: the upper end is ``inf`` ("> X"). When the
measurement holds intervals over the equilibrium (checkpoints that make at least two independent
draws, :mod:`bscrit.stats.equilibrium`, docs/theory.md §8), G, N and NSR with their intervals are those
(:func:`interval_scope`): the recommended range then ends at the lower 95% bound of B* over the
equilibrium, not at one checkpoint's.

Which parameters: the theorems assume a scale-invariant loss. bscrit uses the scale-invariant subset
when it covers at least :data:`SCALE_INVARIANT_MIN_FRACTION` of the trainable parameters, else all
parameters, and always says which (:func:`choose_param_set`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bscrit.artifacts.measurement import Measurement, ParamSetStats, finite_or_none
from bscrit.errors import ArtifactError, UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import SetInterval, one_draw_advice, relaxation_steps
from bscrit.stats.estimators import NoiseStats, finite_population_factor, per_example_trace
from bscrit.theory.scaling import RuleLimit

#: C² of [LMA21]; C² = 2 matched the paper's "test error within 20% of the best" criterion.
DEFAULT_C2 = 2.0

#: Use the scale-invariant subset when it holds at least this fraction of the parameters.
SCALE_INVARIANT_MIN_FRACTION = 0.5

#: Warn when the equilibrium residual |ρ| of [LMA21] eq. (11) exceeds this (docs/theory.md §3):
#: (2 − ηλ)λR off by more than 50% from η(G + N) means the checkpoint is far from equilibrium.
EQUILIBRIUM_RESIDUAL_MAX = 0.5


def check_c2(c2: float) -> float:
    """C² must be > 1 (C > 1 in [LMA21] Def. 5.1)."""
    if not (isinstance(c2, int | float) and math.isfinite(c2) and c2 > 1.0):
        raise UsageError(
            f"{{c2}} must be a number > 1 (C > 1 in [LMA21] Def. 5.1), got {c2}", c2="c2"
        )
    return float(c2)


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# One measurement
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSetChoice:
    """Which parameters the bounds use, and why."""

    name: str  # "scale_invariant" | "all" | "preconditioned"
    stats: ParamSetStats
    scale_invariant_fraction: float
    reason: str


def choose_param_set(m: Measurement) -> ParamSetChoice:
    """The scale-invariant subset when it covers ≥ 50% of the parameters, else all parameters.

    The theorems of [LMA21] §5 assume a scale-invariant loss (docs/theory.md §3).
    """
    f = m.scale_invariant_fraction
    pct = f"{100 * f:.1f}%"
    adaptive = m.optimizer is not None and optim.get(m.optimizer.name).adaptive
    if adaptive and m.preconditioned is not None:
        return ParamSetChoice(
            "preconditioned",
            m.preconditioned,
            f,
            "the preconditioned gradient P∇L, the noise the adaptive update sees (docs/theory.md "
            "§5); in the AdamW sweep of docs/validation.md its B* was the closest candidate to "
            "where the square-root rule failed",
        )
    if m.scale_invariant is not None and f >= SCALE_INVARIANT_MIN_FRACTION:
        return ParamSetChoice(
            "scale_invariant",
            m.scale_invariant,
            f,
            f"the scale-invariant parameters ({pct} of the parameters), as [LMA21] §5 assumes",
        )
    why = (
        "no scale-invariant parameters were found"
        if m.scale_invariant is None or f == 0
        else f"the scale-invariant subset covers only {pct} of the parameters"
    )
    return ParamSetChoice(
        "all",
        m.all,
        f,
        f"all parameters: {why}; the theorems of [LMA21] §5 assume a scale-invariant loss, so "
        "the bounds are a heuristic reading here",
    )


@dataclass(frozen=True)
class Reading:
    """NSR and B* from one parameter set, shown beside the one the recommendation uses."""

    name: str  # "all" | "scale_invariant" | "preconditioned"
    nsr: float
    nsr_ci95: tuple[float, float]
    b_star: float
    b_star_ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "param_set": self.name,
            "nsr": finite_or_none(self.nsr),
            "nsr_ci95": [finite_or_none(x) for x in self.nsr_ci95],
            "b_star": finite_or_none(self.b_star),
            "b_star_ci95": [finite_or_none(x) for x in self.b_star_ci95],
        }


def _reading(name: str, m: Measurement, s: ParamSetStats, c2: float) -> Reading | None:
    if not s.N > 0:
        return None
    ns, _, _ = interval_scope(m, name, s.noise_stats())
    b = m.batch_size
    lo, hi = ns.nsr_ci95
    bs = (critical_batch_size(b, lo, c2), critical_batch_size(b, hi, c2))
    return Reading(name, ns.nsr, ns.nsr_ci95, critical_batch_size(b, ns.nsr, c2), bs)


def other_readings(m: Measurement, used: str, c2: float) -> tuple[Reading, ...]:
    """The raw reading beside the preconditioned one (or the reverse), so that ``predict`` shows
    both; nothing when the measurement has no preconditioned statistics."""
    if used == "preconditioned":
        raw = _reading("all", m, m.all, c2)
        return (raw,) if raw is not None else ()
    if m.preconditioned is None:
        return ()
    pre = _reading("preconditioned", m, m.preconditioned, c2)
    return (pre,) if pre is not None else ()


@dataclass(frozen=True)
class ImplicitRegularisation:
    """[SDBD21] eq. 22 terms at the run's learning rate."""

    lr: float
    signal_term: float  # (η/4) G
    noise_term: float  # (η/4) N^B


@dataclass(frozen=True)
class MeasurementBounds:
    """Every number ``bscrit predict`` reports for one measurement."""

    source: str
    batch_size: int
    dataset_size: int
    c2: float
    param_set: str  # "scale_invariant" | "all"
    param_set_reason: str
    scale_invariant_fraction: float
    noise: NoiseStats  # G, N, NSR and intervals recomputed from the jackknife values
    b_star: float  # inf when Ĝ <= 0
    b_star_ci95: tuple[float, float]  # hi may be inf
    b_star_approx: float
    b_star_approx_ci95: tuple[float, float]
    sde_nsr_threshold: float
    sde_certified_invalid: bool
    thm55_base_batch_below: float | None
    thm55_kappa_min: float | None
    b_simple: float | None
    implicit_regularisation: ImplicitRegularisation | None
    equilibrium_residual: float | None
    optimizer: OptimizerInfo | None
    warnings: tuple[str, ...]
    other_readings: tuple[Reading, ...] = ()
    #: what the 95% intervals cover: "checkpoint", "checkpoints" or "equilibrium" (§8)
    interval_scope: str = "checkpoint"
    interval_note: str = ""  # the same in words, with how to get an equilibrium interval

    @property
    def nsr(self) -> float:
        return self.noise.nsr

    @property
    def nsr_ci95(self) -> tuple[float, float]:
        return self.noise.nsr_ci95

    @property
    def b_star_bounded(self) -> bool:
        """False when B* has no upper bound at this precision (Ĝ's interval reaches 0)."""
        return math.isfinite(self.b_star_ci95[1])


def _noise_stats(s: ParamSetStats, source: str, which: str) -> NoiseStats:
    if not s.N > 0:
        raise ArtifactError(
            f"{source}: N = {s.N:g} ≤ 0 for {which} parameters: no gradient noise was measured "
            "(is the batch the whole dataset?), so there is no noise-to-signal ratio to bound"
        )
    if len(s.jackknife_G) < 2 or len(s.jackknife_G) != len(s.jackknife_N):
        raise ArtifactError(
            f"{source}: the jackknife needs at least 2 groups with one G and one N value each; "
            f"found {len(s.jackknife_G)} G and {len(s.jackknife_N)} N values"
        )
    try:
        return s.noise_stats()
    except (ValueError, ZeroDivisionError) as e:
        raise ArtifactError(f"{source}: cannot recompute the intervals ({e})") from None


def interval_scope(m: Measurement, param_set: str, ns: NoiseStats) -> tuple[NoiseStats, str, str]:
    """The statistics the bounds use and what their intervals cover (docs/theory.md §8).

    When the measurement has an interval over the equilibrium for ``param_set`` (several draws),
    G, N and NSR with their intervals are those; otherwise ``ns`` (batch noise only) is kept and
    the note says it covers this checkpoint (or these checkpoints' average) only.

    Returns:
        ``(noise stats, scope, note)``; scope is "equilibrium", "checkpoints" or "checkpoint".
    """
    e = m.equilibrium_interval
    si: SetInterval | None = e.sets.get(param_set) if e is not None else None
    if e is not None and e.covers_equilibrium and si is not None:
        ns = replace(ns, G=si.G, N=si.N, nsr=si.nsr, nsr_ci95=si.nsr_ci95)
        draws = f"{e.draws} independent draws from {e.checkpoints} checkpoints"
        return ns, "equilibrium", f"over the equilibrium: {draws} ({e.note})"
    advice = one_draw_advice(e.relaxation_steps if e else relaxation_steps(m.optimizer)[0])
    k = len(m.checkpoints)
    if k <= 1:
        return ns, "checkpoint", f"the batch noise at this checkpoint only; {advice}"
    why = e.note if e is not None else "measured before bscrit formed equilibrium intervals"
    return ns, "checkpoints", f"the batch noise of these {k} checkpoints only ({why}); {advice}"


def measurement_bounds(
    m: Measurement, source: str = "<measurement>", c2: float = DEFAULT_C2
) -> MeasurementBounds:
    """Bounds of docs/theory.md §4 and readings of §7 for one measurement, with 95% intervals."""
    c2 = check_c2(c2)
    choice = choose_param_set(m)
    ns = _noise_stats(choice.stats, source, choice.name.replace("_", "-"))
    ns, scope, scope_note = interval_scope(m, choice.name, ns)
    b = m.batch_size
    nsr, (nsr_lo, nsr_hi) = ns.nsr, ns.nsr_ci95
    warnings: list[str] = []
    if choice.name == "all":
        warnings.append(f"bounds use {choice.reason}")

    bs = critical_batch_size(b, nsr, c2)
    bs_ci = (critical_batch_size(b, nsr_lo, c2), critical_batch_size(b, nsr_hi, c2))
    ba = critical_batch_size_approx(b, nsr, c2)
    ba_ci = (critical_batch_size_approx(b, nsr_lo, c2), critical_batch_size_approx(b, nsr_hi, c2))
    if ns.G.value <= 0:
        warnings.append(
            f"no signal detected: Ĝ = {ns.G.value:.3g} ≤ 0, the gradient is buried in the noise at "
            f"this precision; B* > {bs_ci[0]:.0f} (lower 95% bound only). Measure more batches "
            "to bound it"
        )
    elif not ns.signal_detected:
        warnings.append(
            f"Ĝ's 95% interval [{ns.G.ci95[0]:.3g}, {ns.G.ci95[1]:.3g}] includes 0: B* has no "
            f"upper bound at this precision; B* > {bs_ci[0]:.0f} (lower 95% bound only). Measure "
            "more batches to bound it"
        )

    adaptive = m.optimizer is not None and optim.get(m.optimizer.name).adaptive
    if sde_certified_invalid(nsr, c2):
        warnings.append(
            f"NSR = {nsr:.3g} < 1/(C² − 1) = {sde_nsr_threshold(c2):.3g}: the SDE approximation is "
            "certified to fail at this batch size [LMA21 Thm 5.2 (ii)], so the linear rule has no "
            "SDE justification from here; B* is only an upper limit"
            if not adaptive
            else f"NSR = {nsr:.3g} < 1/(C² − 1) = {sde_nsr_threshold(c2):.3g}: for SGD the SDE "
            "approximation would be certified to fail here [LMA21 Thm 5.2 (ii)]; for this "
            "adaptive run that is a heuristic reading of a result proved for SGD"
        )

    rho = m.equilibrium.residual if m.equilibrium is not None else None
    if rho is not None and math.isfinite(rho) and abs(rho) > EQUILIBRIUM_RESIDUAL_MAX:
        warnings.append(
            f"equilibrium residual ρ = {rho:+.2f} (|ρ| > {EQUILIBRIUM_RESIDUAL_MAX:g}): the "
            "checkpoint is far from the SGD equilibrium of [LMA21] eq. (11) (early in training, "
            "or just after an LR drop?); the bounds assume equilibrium and are weaker here"
        )

    opt = m.optimizer
    ir = None
    if opt is not None and opt.name.lower() == "sgd":
        lr = optim.current_lr(opt)  # the LR the checkpoint's dynamics run at
        sig, noi = implicit_regularisation(lr, ns.G.value, ns.N.value)
        ir = ImplicitRegularisation(lr, sig, noi)
    if opt is not None and opt.name.lower() != "sgd":
        d = optim.get(opt.name)
        how = f"scaled by the {d.rule_reference}"
        if d.rule == "none":
            how = f"and no scaling rule is established for {opt.name} (docs/theory.md §5)"
        warnings.append(
            f"the run used {opt.name}: Thms 5.2, 5.5 and 5.6 of [LMA21] are proved for SGD, so B* "
            f"is a heuristic reading for {opt.name}, {how}"
        )
    if opt is None:
        warnings.append("the measurement records no optimizer: no scaled hyperparameters")

    return MeasurementBounds(
        source=source,
        batch_size=b,
        dataset_size=m.dataset_size,
        c2=c2,
        param_set=choice.name,
        param_set_reason=choice.reason,
        scale_invariant_fraction=choice.scale_invariant_fraction,
        noise=ns,
        b_star=bs,
        b_star_ci95=bs_ci,
        b_star_approx=ba,
        b_star_approx_ci95=ba_ci,
        sde_nsr_threshold=sde_nsr_threshold(c2),
        sde_certified_invalid=sde_certified_invalid(nsr, c2),
        thm55_base_batch_below=thm55_base_batch_below(b, nsr, c2),
        thm55_kappa_min=thm55_kappa_min(nsr, c2),
        b_simple=simple_noise_scale(ns.N.value, ns.G.value, m.dataset_size, b),
        implicit_regularisation=ir,
        equilibrium_residual=rho,
        optimizer=opt,
        warnings=tuple(warnings),
        other_readings=other_readings(m, choice.name, c2),
        interval_scope=scope,
        interval_note=scope_note,
    )


# ----------------------------------------------------------------------------------------------
# Across measurements: range and recommendation
# ----------------------------------------------------------------------------------------------


def b_star_range(bounds: Sequence[MeasurementBounds]) -> tuple[float, float]:
    """(min, max) of the B* point estimates across baselines, as in [LMA21] Fig. 3."""
    if not bounds:
        raise ValueError("no measurements")
    values = [b.b_star for b in bounds]
    return min(values), max(values)


#: ``recommended.limited_by``: what ends the recommended range (None: no limit was detected, or
#: the range is empty; the note says which).
LIMITED_BY = ("b_star", "scaling_rule", "dataset_size")


@dataclass(frozen=True)
class Recommendation:
    """Batch sizes from the base run's B up to the first limit: the smallest lower 95% bound of
    B*, the largest B' the optimizer's scaling rule reaches, or the dataset size n."""

    min: int  # the base run's batch size
    max: float  # the top of the range (inf: no limit detected)
    max_pow2: int | None  # largest power of two in [min, max]
    max_mult8: int | None  # largest multiple of 8 in [min, max]
    empty: bool  # max < min: the base batch is already past the critical batch
    note: str
    limited_by: str | None = None  # one of LIMITED_BY, or None

    def to_dict(self) -> dict[str, Any]:
        """The ``recommended`` object of ``predict --json`` and ``check --json``."""
        return {
            "min": self.min,
            "max": finite_or_none(self.max),
            "max_pow2": self.max_pow2,
            "max_mult8": self.max_mult8,
            "empty": self.empty,
            "limited_by": self.limited_by,
            "note": self.note,
        }

    @property
    def target(self) -> int | None:
        """The integer top of the range (None when empty or unbounded)."""
        if self.empty or not math.isfinite(self.max):
            return None
        return int(math.floor(self.max))


def first_limit(b_star_lower: float, rule: RuleLimit | None, n: int) -> tuple[float, str]:
    """The smallest of the three limits of the recommended range and its name (one of
    :data:`LIMITED_BY`; on a tie, the first in that order): the one rule ``recommend`` and
    ``check`` share."""
    limits = [(b_star_lower, "b_star")]
    if rule is not None and rule.batch_max is not None:
        limits.append((float(rule.batch_max), "scaling_rule"))
    limits.append((float(n), "dataset_size"))
    return min(limits, key=lambda x: x[0])


def recommend(bounds: Sequence[MeasurementBounds], rule: RuleLimit | None = None) -> Recommendation:
    """Recommended range: from the base measurement's B to the first of three limits.

    1. ``b_star``: the smallest lower 95% bound of B* over the baselines. Below it no baseline
       gives evidence that the rule fails [LMA21 Thm 5.6] (a necessary condition, not a
       guarantee; a heuristic reading for adaptive optimizers).
    2. ``scaling_rule``: the largest B' the optimizer's rule reaches from B
       (:func:`bscrit.theory.scaling.rule_limit`, docs/theory.md §5).
    3. ``dataset_size``: a batch holds at most the n examples.

    ``limited_by`` is None when Ĝ's interval reaches 0 (no limit detected from B*: measure
    more) or when the range is empty.
    """
    if not bounds:
        raise ValueError("no measurements")
    base = bounds[0].batch_size
    top = min(b.b_star_ci95[0] for b in bounds)
    if not math.isfinite(top):
        return Recommendation(
            base, math.inf, None, None, False,
            "no upper limit detected at this precision (Ĝ's interval is entirely ≤ 0): measure "
            "more batches before scaling up",
        )  # fmt: skip
    if top < base:
        return Recommendation(
            base, top, None, None, True,
            f"the base batch size {base} is already past the critical batch: the lower 95% bound "
            f"of B* across the baselines is {top:.0f} < {base}; the recommended range is empty",
        )  # fmt: skip
    n = min(b.dataset_size for b in bounds)
    value, which_ = first_limit(top, rule, n)
    which: str | None = which_
    why = {
        "b_star": f"the lower 95% bound of B* ({top:.0f})",
        "scaling_rule": f"the scaling rule's reach: {rule.reason if rule else ''}",
        "dataset_size": f"n: capped at the dataset size n = {n}",
    }[which_]
    value = max(value, float(base))
    note = f"from the measured B = {base} up to {why}"
    if which != "b_star":
        note += f"; the lower 95% bound of B* ({top:.0f}) is above it"
    elif not all(b.b_star_bounded for b in bounds):  # Ĝ's interval reaches 0
        which = None
        note += (
            "; no limit was detected: Ĝ's 95% interval reaches 0, so B* has no upper bound at "
            "this precision and its lower bound is all that is known (measure more batches)"
        )
    return Recommendation(
        base,
        value,
        largest_power_of_two(base, value),
        largest_multiple(base, value, 8),
        False,
        note,
        which,
    )
