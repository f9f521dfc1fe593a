"""The bounds of [LMA21] §5 for one measurement, with 95% intervals, and the readings built on
them (pure: no torch, no numpy).

docs/theory.md §4 and §7; the formulas are :mod:`bscrit.theory.formulas`, the range across
measurements :mod:`bscrit.theory.recommendation`.

Intervals: B* and its approximation are increasing in NSR, so their 95% intervals are the NSR
interval (built from the stored jackknife values by :func:`bscrit.stats.estimators.nsr_interval`)
mapped through the formula, never endpoints of G and N plugged in separately. When Ĝ's interval
reaches 0 the NSR (and B*) has no upper bound at this precision: the upper end is ``inf``
("> X"). When the measurement holds intervals over the equilibrium (checkpoints that make at
least two independent draws, :mod:`bscrit.stats.equilibrium`, docs/theory.md §8), G, N and NSR
with their intervals are those (:func:`interval_scope`): the recommended range then ends at the
lower 95% bound of B* over the equilibrium, not at one checkpoint's.

Theorem flags (docs/theory.md §4): Thm 5.2 (ii) and Thm 5.5 speak of the *equilibrium* NSR
N∞/G∞, so they are read from the ends of the NSR interval, never from its point value, and
called ``certified`` only when that interval covers the equilibrium (:func:`theorem_status`);
from one checkpoint's interval the same reading is ``provisional``. For any optimizer but plain
SGD (momentum included: [LMA21] §5 proves them for plain SGD) they are a heuristic reading.

Which parameters: the theorems assume a scale-invariant loss. bscrit uses the scale-invariant subset
when it covers at least :data:`SCALE_INVARIANT_MIN_FRACTION` of the trainable parameters, else all
parameters, and always says which (:func:`choose_param_set`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.artifacts.measurement import Measurement
from bscrit.artifacts.records import ParamSetStats
from bscrit.errors import ArtifactError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import (
    SetInterval,
    narrowing_advice,
    one_draw_advice,
    relaxation_steps,
)
from bscrit.stats.estimators import NoiseStats
from bscrit.theory.formulas import (
    DEFAULT_C2,
    check_c2,
    critical_batch_size,
    critical_batch_size_approx,
    implicit_regularisation,
    sde_certified_invalid,
    sde_nsr_threshold,
    simple_noise_scale,
    thm55_base_batch_below,
    thm55_kappa_min,
)

#: Use the scale-invariant subset when it holds at least this fraction of the parameters.
SCALE_INVARIANT_MIN_FRACTION = 0.5

#: What a theorem flag says (:func:`theorem_status`): ``certified`` (the whole 95% interval over
#: the equilibrium satisfies the theorem's condition), ``provisional`` (the whole interval does,
#: but it covers the measured checkpoint(s) only), ``undecided`` (the interval reaches across
#: the condition's threshold), ``no`` (the whole interval misses the condition).
THEOREM_STATUSES = ("certified", "provisional", "undecided", "no")

#: Warn when the equilibrium residual |ρ| of [LMA21] eq. (11) exceeds this (docs/theory.md §3):
#: (2 − ηλ)λR off by more than 50% from η(G + N) means the checkpoint is far from equilibrium.
EQUILIBRIUM_RESIDUAL_MAX = 0.5


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
    sde_certified_invalid: bool  # Thm 5.2 (ii) from the NSR interval's upper end, at equilibrium
    thm55_base_batch_below: float | None  # from the NSR interval's upper end (decreasing in NSR)
    thm55_kappa_min: float | None  # likewise
    b_simple: float | None
    implicit_regularisation: ImplicitRegularisation | None
    equilibrium_residual: float | None
    optimizer: OptimizerInfo | None
    warnings: tuple[str, ...]
    other_readings: tuple[Reading, ...] = ()
    #: what the 95% intervals cover: "checkpoint", "checkpoints" or "equilibrium" (§8)
    interval_scope: str = "checkpoint"
    interval_note: str = ""  # the same in words, with how to get an equilibrium interval
    sde_thm52: str = "no"  # Thm 5.2 (ii): one of THEOREM_STATUSES
    thm55: str = "no"  # Thm 5.5: one of THEOREM_STATUSES
    #: why the theorems are a heuristic reading here ("" for plain SGD on scale-invariant weights)
    heuristic: str = ""

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


def theorem_status(holds_lo: bool, holds_hi: bool, scope: str) -> str:
    """One of :data:`THEOREM_STATUSES` from whether a theorem's condition holds at the two ends of
    the NSR interval and what that interval covers.

    Args:
        holds_lo: the condition holds at the interval's lower end.
        holds_hi: the condition holds at its upper end.
        scope: ``interval_scope``'s "equilibrium", "checkpoints" or "checkpoint".
    """
    if holds_lo and holds_hi:
        return "certified" if scope == "equilibrium" else "provisional"
    return "undecided" if holds_lo or holds_hi else "no"


def provisional_note(bounds: Sequence[MeasurementBounds]) -> str:
    """Why an answer from these measurements is provisional ("" when every interval covers the
    equilibrium): the first measurement whose interval does not, in its own words."""
    b = next((b for b in bounds if b.interval_scope != "equilibrium"), None)
    if b is None:
        return ""
    src = f" ({b.source})" if len(bounds) > 1 else ""
    return f"provisional: the 95% interval{src} covers {b.interval_note.removeprefix('over ')}"


def heuristic_reason(opt: OptimizerInfo | None, param_set: str) -> str:
    """Why Thms 5.2, 5.5 and 5.6 of [LMA21] are only a heuristic reading for this measurement
    ("" when they apply as proved: plain SGD on the scale-invariant parameters)."""
    why: list[str] = []
    if opt is not None and opt.name.lower() != "sgd":
        why.append(f"the run used {opt.name}, and [LMA21] §5 proves them for plain SGD")
    elif opt is not None and opt.momentum > 0:
        why.append(
            f"the run used SGD with momentum {opt.momentum:g}, and [LMA21] §5 proves them for "
            "plain SGD (no momentum)"
        )
    if param_set == "all":
        why.append("they assume a scale-invariant loss, and the bounds use all parameters")
    return "; ".join(why)


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
    e = m.equilibrium_interval
    tau = e.relaxation_steps if e else relaxation_steps(m.optimizer)[0]
    advice = narrowing_advice(scope, tau, e.draws if e else 1)
    warnings += _signal_warnings(ns, bs_ci[0], advice)
    heuristic = heuristic_reason(m.optimizer, choice.name)
    thr = sde_nsr_threshold(c2)
    thm52 = theorem_status(nsr_lo < thr, nsr_hi < thr, scope)
    if thm52 in ("certified", "provisional"):
        warnings.append(_sde_warning(nsr_hi, c2, thm52, heuristic))
    k55 = thm55_kappa_min(nsr_hi, c2)  # decreasing in NSR: the upper end is the safe side
    thm55 = theorem_status(thm55_kappa_min(nsr_lo, c2) is not None, k55 is not None, scope)
    rho = m.equilibrium.residual if m.equilibrium is not None else None
    if rho is not None and math.isfinite(rho) and abs(rho) > EQUILIBRIUM_RESIDUAL_MAX:
        warnings.append(_equilibrium_warning(rho))
    ir, optimizer_warnings = _optimizer_readings(m.optimizer, ns)
    warnings += optimizer_warnings

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
        sde_nsr_threshold=thr,
        sde_certified_invalid=thm52 == "certified" and sde_certified_invalid(nsr_hi, c2),
        thm55_base_batch_below=thm55_base_batch_below(b, nsr_hi, c2),
        thm55_kappa_min=k55,
        b_simple=simple_noise_scale(ns.N.value, ns.G.value, m.dataset_size, b),
        implicit_regularisation=ir,
        equilibrium_residual=rho,
        optimizer=m.optimizer,
        warnings=tuple(warnings),
        other_readings=other_readings(m, choice.name, c2),
        interval_scope=scope,
        interval_note=scope_note,
        sde_thm52=thm52,
        thm55=thm55,
        heuristic=heuristic,
    )


def _signal_warnings(ns: NoiseStats, b_star_lower: float, advice: str) -> list[str]:
    """Why B* has no upper bound at this precision, when it has none (Ĝ ≤ 0 or Ĝ's interval
    reaching 0), and what would narrow the interval (``advice``, from
    :func:`~bscrit.stats.equilibrium.narrowing_advice`)."""
    if ns.G.value <= 0:
        return [
            f"no signal detected: Ĝ = {ns.G.value:.3g} ≤ 0, the gradient is buried in the noise at "
            f"this precision; B* > {b_star_lower:.0f} (lower 95% bound only); {advice}"
        ]
    if not ns.signal_detected:
        return [
            f"Ĝ's 95% interval [{ns.G.ci95[0]:.3g}, {ns.G.ci95[1]:.3g}] includes 0: B* has no "
            f"upper bound at this precision; B* > {b_star_lower:.0f} (lower 95% bound only); "
            f"{advice}"
        ]
    return []


def _sde_warning(nsr_hi: float, c2: float, status: str, heuristic: str) -> str:
    """[LMA21] Thm 5.2 (ii) says the SGD and SDE equilibria are not C-close here (the whole NSR
    interval below 1/(C² − 1)): what that means, how sure, and for which optimizer."""
    head = (
        f"the NSR interval lies below 1/(C² − 1) = {sde_nsr_threshold(c2):.3g} (upper end "
        f"{nsr_hi:.3g}): by [LMA21 Thm 5.2 (ii)] the equilibria of SGD and its SDE are not "
        "C-close at this batch size, so the scaling rule has no SDE justification from here"
    )
    if status == "provisional":
        head += (
            " (provisional: the interval covers the measured checkpoint(s) only, the theorem "
            "speaks of the equilibrium)"
        )
    return head + (f"; a heuristic reading: {heuristic}" if heuristic else "")


def _equilibrium_warning(rho: float) -> str:
    """The checkpoint is far from the equilibrium of [LMA21] eq. (11) (|ρ| too large)."""
    return (
        f"equilibrium residual ρ = {rho:+.2f} (|ρ| > {EQUILIBRIUM_RESIDUAL_MAX:g}): the "
        "checkpoint is far from the SGD equilibrium of [LMA21] eq. (11) (early in training, "
        "or just after an LR drop?); the bounds assume equilibrium and are weaker here"
    )


def _optimizer_readings(
    opt: OptimizerInfo | None, ns: NoiseStats
) -> tuple[ImplicitRegularisation | None, list[str]]:
    """The implicit-regularisation terms (SGD only) and what the optimizer means for the
    bounds: proved for SGD, a heuristic reading for any other; none recorded, nothing scaled."""
    if opt is None:
        return None, ["the measurement records no optimizer: no scaled hyperparameters"]
    if opt.name.lower() == "sgd":
        lr = optim.current_lr(opt)  # the LR the checkpoint's dynamics run at
        sig, noi = implicit_regularisation(lr, ns.G.value, ns.N.value)
        if opt.momentum > 0:
            return ImplicitRegularisation(lr, sig, noi), [
                f"the run used SGD with momentum {opt.momentum:g}: Thms 5.2, 5.5 and 5.6 of "
                "[LMA21] are proved for plain SGD (§5), so B* is a heuristic reading for "
                "momentum SGD"
            ]
        return ImplicitRegularisation(lr, sig, noi), []
    d = optim.get(opt.name)
    how = f"scaled by the {d.rule_reference}"
    if d.rule == "none":
        how = f"and no scaling rule is established for {opt.name} (docs/theory.md §5)"
    return None, [
        f"the run used {opt.name}: Thms 5.2, 5.5 and 5.6 of [LMA21] are proved for SGD, so B* "
        f"is a heuristic reading for {opt.name}, {how}"
    ]
