"""``bscrit predict`` and ``bscrit check`` as pure functions: measurement JSON in, answers out.

No torch: everything here is a few float64 operations on the sums stored in the artifact
(docs/theory.md §4, §5, §7; [LMA21] Thms 5.2, 5.5, 5.6). The first measurement is the *base*
run: its batch size starts the recommended range and its optimizer is the one that gets scaled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none, finite_pair
from bscrit.artifacts.measurement import Measurement, load_measurement
from bscrit.checker import check_batch_size
from bscrit.errors import BscritError, ExitCode, UsageError
from bscrit.optim import registry as optim
from bscrit.theory.bounds import MeasurementBounds, measurement_bounds, provisional_note
from bscrit.theory.formulas import DEFAULT_C2, check_c2, nsr_at_batch
from bscrit.theory.recommendation import (
    Recommendation,
    b_star_range,
    batch_range,
    first_limit,
    limit_words,
    recommend,
)
from bscrit.theory.scaled import ScaledHyperparameters, scale_hyperparameters
from bscrit.theory.scaling import (
    ADAPTIVE_SDE_MIN_NSR,
    DEFAULT_ADAM_RULE,
    RuleLimit,
    check_adam_rule,
    rule_limit,
    rule_reaches,
)


def bounds_to_dict(b: MeasurementBounds) -> dict[str, Any]:
    """One entry of ``predict --json``'s ``measurements`` list (inf written as null)."""
    ns = b.noise
    ir = b.implicit_regularisation
    return {
        "source": b.source,
        "batch_size": b.batch_size,
        "dataset_size": b.dataset_size,
        "param_set": b.param_set,
        "param_set_reason": b.param_set_reason,
        "scale_invariant_fraction": b.scale_invariant_fraction,
        "G": finite_or_none(ns.G.value),
        "G_ci95": finite_pair(ns.G.ci95),
        "N": finite_or_none(ns.N.value),
        "N_ci95": finite_pair(ns.N.ci95),
        "signal_detected": ns.signal_detected,
        "nsr": finite_or_none(b.nsr),
        "nsr_ci95": finite_pair(b.nsr_ci95),
        "b_star": finite_or_none(b.b_star),
        "b_star_ci95": finite_pair(b.b_star_ci95),
        "b_star_approx": finite_or_none(b.b_star_approx),
        "b_star_approx_ci95": finite_pair(b.b_star_approx_ci95),
        "sde_nsr_threshold": finite_or_none(b.sde_nsr_threshold),
        "sde_certified_invalid": b.sde_certified_invalid,
        "sde_thm52": b.sde_thm52,
        "thm55": b.thm55,
        "thm55_base_batch_below": finite_or_none(b.thm55_base_batch_below),
        "thm55_kappa_min": finite_or_none(b.thm55_kappa_min),
        "heuristic": b.heuristic or None,
        "b_simple": finite_or_none(b.b_simple),
        "implicit_regularisation": (
            None
            if ir is None
            else {
                "lr": ir.lr,
                "signal_term": finite_or_none(ir.signal_term),
                "noise_term": finite_or_none(ir.noise_term),
            }  # fmt: skip
        ),
        "equilibrium_residual": finite_or_none(b.equilibrium_residual),
        "optimizer": b.optimizer.name if b.optimizer is not None else None,
        "other_readings": [o.to_dict() for o in b.other_readings],
        "interval": {"scope": b.interval_scope, "note": b.interval_note},
        "warnings": list(b.warnings),
    }


@dataclass(frozen=True)
class Prediction:
    """The answer of ``bscrit predict``."""

    c2: float
    measurements: tuple[MeasurementBounds, ...]
    range: tuple[float, float]  # min and max of the B* point estimates
    recommended: Recommendation
    scaled: ScaledHyperparameters | None  # base run's optimizer scaled to the top of the range
    warnings: tuple[str, ...]  # about the range / scaling (per-measurement ones live in bounds)
    rule_limit: RuleLimit | None = None  # how far the base optimizer's scaling rule reaches
    #: Adam/AdamW/RMSprop: the variant of the square-root rule applied (None: SGD, or none known)
    adam_rule: str | None = None
    #: How far each variant of the rule reaches (``"linear"`` for SGD; ``"full"`` and
    #: ``"lr-only"`` for the adaptive optimizers), and which limit binds each
    rule_reaches: Mapping[str, RuleLimit] = field(default_factory=dict)
    #: NSR at the top of the range (preconditioned for adaptive runs when measured): the
    #: square-root rule's noise-dominance statistic, docs/theory.md §5 (threshold 1, heuristic)
    nsr_at_target: float | None = None

    @property
    def base(self) -> MeasurementBounds:
        return self.measurements[0]

    @property
    def b_star_min(self) -> float:
        """Smallest B* point estimate: ``check`` fails a target above it."""
        return self.range[0]

    def to_dict(self) -> dict[str, Any]:
        r = self.recommended
        return {
            "c2": self.c2,
            "measurements": [bounds_to_dict(b) for b in self.measurements],
            "range": finite_pair(self.range),
            "recommended": r.to_dict(),
            "scaled": self.scaled.to_dict() if self.scaled is not None else None,
            "noise_dominance": (
                None
                if self.nsr_at_target is None
                else {
                    "batch_size": self.recommended.target,
                    "nsr": finite_or_none(self.nsr_at_target),
                    "param_set": self.base.param_set,
                    "threshold": ADAPTIVE_SDE_MIN_NSR,
                }
            ),  # fmt: skip
            "warnings": list(self.warnings),
        } | ({"adam_rule": self.adam_rule} if self.adam_rule is not None else {}) | (
            {"rule_reaches": {k: r.to_dict() for k, r in self.rule_reaches.items()}}
            if self.rule_reaches else {}
        )  # fmt: skip


def predict(
    measurements: Sequence[tuple[str, Measurement]],
    c2: float = DEFAULT_C2,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> Prediction:
    """Bounds for each measurement, their range, the recommended range and scaled hyperparameters.

    Args:
        measurements: ``(source, measurement)`` pairs; the first is the base run.
        c2: C² of [LMA21] (> 1).
        adam_rule: the square-root rule's variant for Adam/AdamW/RMSprop
            (:data:`~bscrit.theory.scaling.ADAM_RULES`): it sets the rule's reach in the range
            and the scaled hyperparameters; every variant's reach is reported.
    """
    c2 = check_c2(c2)
    adam_rule = check_adam_rule(adam_rule)
    if not measurements:
        raise UsageError("predict needs at least one measurement")
    bounds = tuple(measurement_bounds(m, src, c2) for src, m in measurements)
    limit = _rule_limit(bounds[0], adam_rule)
    rec = recommend(bounds, limit)
    warnings: list[str] = []
    scaled: ScaledHyperparameters | None = None
    nsr_target: float | None = None
    base = bounds[0]
    target = rec.target
    if base.optimizer is None:
        warnings.append(
            f"{base.source} records no optimizer: no scaled hyperparameters (use `bscrit scale`)"
        )
    elif rec.empty:
        warnings.append("the recommended range is empty: no scaled hyperparameters")
    elif target is None:
        warnings.append("the recommended range has no upper end: no scaled hyperparameters")
    else:
        nsr_t = nsr_at_batch(base.nsr, base.batch_size, target, base.dataset_size)
        if optim.get(base.optimizer.name).adaptive:
            nsr_target = nsr_t
        try:
            scaled = scale_hyperparameters(
                base.optimizer, base.batch_size, target, nsr_target=nsr_t, adam_rule=adam_rule
            )
        except BscritError as e:
            warnings.append(f"no scaled hyperparameters for B' = {target}: {e.message}")
    return Prediction(
        c2=c2,
        measurements=bounds,
        range=b_star_range(bounds),
        recommended=rec,
        scaled=scaled,
        warnings=tuple(warnings),
        rule_limit=limit,
        nsr_at_target=nsr_target,
        adam_rule=adam_rule if _adaptive(base) else None,
        rule_reaches=_reaches(base),
    )


def _adaptive(base: MeasurementBounds) -> bool:
    return base.optimizer is not None and optim.get(base.optimizer.name).adaptive


def _reaches(base: MeasurementBounds) -> dict[str, RuleLimit]:
    """Every variant's reach from the base run's B ({} without an optimizer with a rule)."""
    try:
        return {} if base.optimizer is None else rule_reaches(base.optimizer, base.batch_size)
    except BscritError:
        return {}


def _other_rule(p: Prediction, target: int) -> str:
    """``"; --adam-rule lr-only reaches B' ≤ 1e8"`` when another variant reaches ``target``."""
    for name, r in p.rule_reaches.items():
        fits = r.batch_max is None or target <= r.batch_max
        if name not in (p.adam_rule, "linear") and fits:
            reach = "has no limit" if r.batch_max is None else f"reaches B' <= {r.batch_max}"
            return f"; --adam-rule {name} (not [MLPA22]'s rule; docs/theory.md §5) {reach}"
    return ""


def _rule_limit(base: MeasurementBounds, adam_rule: str = DEFAULT_ADAM_RULE) -> RuleLimit | None:
    """How far the base run's optimizer rule reaches (None: no optimizer, or invalid values)."""
    if base.optimizer is None:
        return None
    try:
        return rule_limit(base.optimizer, base.batch_size, adam_rule)
    except BscritError:
        return None


def _rule_words(p: Prediction) -> tuple[str, str]:
    """("linear scaling" | "the square-root rule", the Thm 5.6 reference fit for the optimizer:
    a heuristic reading for anything but plain SGD, momentum SGD included)."""
    opt = p.base.optimizer
    if opt is not None and optim.get(opt.name).rule == "none":
        return (f"{opt.name} ({optim.get(opt.name).rule_reference})",
                "(a heuristic reading of [LMA21 Thm 5.6], proved for SGD)")  # fmt: skip
    if opt is not None and opt.name.lower() == "sgd" and opt.momentum > 0:
        return "linear scaling", "(a heuristic reading of [LMA21 Thm 5.6], proved for plain SGD)"
    if opt is None or not optim.get(opt.name).adaptive:
        return "linear scaling", "[LMA21 Thm 5.6]"
    if p.adam_rule == "lr-only":
        return (f"LR-only square-root scaling for {opt.name} (--adam-rule lr-only, not [MLPA22]'s "
                "rule)", "(a heuristic reading of [LMA21 Thm 5.6], proved for SGD)")  # fmt: skip
    return (
        f"the {optim.get(opt.name).rule_reference} for {opt.name}",
        "(a heuristic reading of [LMA21 Thm 5.6], proved for SGD)",
    )


def predict_files(
    paths: Sequence[str | os.PathLike[str]],
    c2: float = DEFAULT_C2,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> Prediction:
    """:func:`predict` on measurement JSON files (raises ArtifactError for a bad file)."""
    return predict([(str(p), load_measurement(p)) for p in paths], c2, adam_rule)


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------


#: ``CheckResult.limited_by``: what sets the top of the range ``check`` applies.
LIMITED_BY = ("b_star", "scaling_rule", "dataset_size")
#: ``check``'s gates for a B' between B*'s lower 95% bound and its estimate: exit 5 / exit 0.
GATES = ("lower", "point")


@dataclass(frozen=True)
class CheckResult:
    """The verdict of ``bscrit check`` for a target batch size B'.

    ``limited_by`` says which limit binds the top of the range (``range_max``): ``"b_star"``, the
    lower 95% bound of B*, or ``"dataset_size"``, n, when that bound is above n (B* is beyond
    full-batch training: a batch cannot hold more distinct examples than the data).
    """

    target: int
    verdict: str  # "ok" | "warn" (between the bound and the estimate) | "fail"
    exit_code: ExitCode  # 0, 1, 5 (undecided) or 6 (provisional): :func:`check`
    reason: str  # the one line that says why
    strict: bool
    prediction: Prediction
    limited_by: str = "b_star"  # one of LIMITED_BY
    range_max: float = math.inf  # min(lower 95% bound of B*, the rule's reach, n)
    gate: str = "lower"  # one of GATES
    provisional: bool = False  # rests on intervals over the checkpoint(s), not the equilibrium
    allow_provisional: bool = False

    def to_dict(self) -> dict[str, Any]:
        p = self.prediction
        r = p.recommended
        return {
            "batch_size": self.target,
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "reason": self.reason,
            "strict": self.strict,
            "gate": self.gate,
            "provisional": self.provisional,
            "allow_provisional": self.allow_provisional,
            "c2": p.c2,
            "base_batch_size": p.base.batch_size,
            "b_star": finite_or_none(p.b_star_min),
            "b_star_lower": finite_or_none(b_star_lower(p)),
            "dataset_size": _dataset_size(p),
            "range_max": finite_or_none(self.range_max),
            "limited_by": self.limited_by,
            "interval_scope": [b.interval_scope for b in p.measurements],
            "recommended": r.to_dict(),
            "warnings": [w for b in p.measurements for w in b.warnings] + list(p.warnings),
        }


def _f(x: float) -> str:
    """A batch size in a reason: whole from 1000 up (58783, not 5.878e+04), else 4 digits."""
    if math.isinf(x):
        return "∞"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def b_star_lower(p: Prediction) -> float:
    """The smallest lower 95% bound of B* across the measurements (not capped at n)."""
    return min(b.b_star_ci95[0] for b in p.measurements)


def _dataset_size(p: Prediction) -> int:
    """n: the smallest training set among the measurements."""
    return min(b.dataset_size for b in p.measurements)


def check(
    prediction: Prediction,
    target: int,
    strict: bool = False,
    *,
    gate: str = "lower",
    allow_provisional: bool = False,
) -> CheckResult:
    """Is B' = ``target`` within the recommended range? (``verdict`` and the CI exit code)

    - B' > n, or past the scaling rule's reach: fail (exit 1). B' ≤ the base B: ok (exit 0).
    - B' ≤ the top of the range, min(lower 95% bound of B*, the rule's reach, n): ok, exit 0;
      6 (provisional) when an interval covers the measured checkpoint(s) only, not the
      equilibrium, unless ``allow_provisional``. The reason says which limit binds.
    - lower bound < B' ≤ point estimate of B*: "warn": exit 5 (undecided) with ``gate="lower"``;
      with ``gate="point"`` as ok above (0, or 6); a fail (exit 1) with ``strict``.
    - B' > point estimate of B* (the smallest across baselines): fail (exit 1) [LMA21 Thm 5.6].
    """
    check_batch_size(target, "batch_size")
    if gate not in GATES:
        raise UsageError(f"{{gate}} must be one of {', '.join(GATES)}, got {gate!r}", gate="gate")
    p = prediction
    base = p.base.batch_size
    lower = b_star_lower(p)
    n = _dataset_size(p)
    point = p.b_star_min
    reach = p.rule_limit.batch_max if p.rule_limit is not None else None
    top, limited_by = first_limit(lower, p.rule_limit, n)
    kappa = target / base
    c2 = f"C² = {p.c2:g}"
    rule, thm = _rule_words(p)

    note = provisional_note(p.measurements)

    def result(verdict: str, code: ExitCode, reason: str, bound: bool = False) -> CheckResult:
        """``bound``: the answer rests on B*'s interval (provisional when ``note``)."""
        provisional = bound and bool(note)
        if provisional:
            reason += f"; {note}"
            if code is ExitCode.OK and not allow_provisional:
                code = ExitCode.PROVISIONAL
        return CheckResult(target, verdict, code, reason, strict, p, limited_by, top, gate,
                           provisional, allow_provisional)  # fmt: skip

    if target > n:
        bound = f"the lower 95% bound of B*, {_f(lower)}"
        ends = f"n = {n}" if limited_by == "dataset_size" else bound
        return result(
            "fail",
            ExitCode.CHECK_FAILED,
            f"B' = {target} is larger than the dataset size n = {n}: a batch cannot hold more "
            f"distinct examples than the data (the recommended range ends at {ends}; {c2})",
        )
    if target <= base:
        return result(
            "ok",
            ExitCode.OK,
            f"B' = {target} ≤ the measured B = {base}: scaling down (or not at all) is in range",
        )
    if reach is not None and target > reach:
        assert p.rule_limit is not None
        return result(
            "fail",
            ExitCode.CHECK_FAILED,
            f"B' = {target} is past what {rule} reaches from B = {base}: "
            f"{p.rule_limit.reason} (κ = {kappa:.3g}); no scaled hyperparameters exist there"
            + _other_rule(p, target),
        )
    if target <= top:
        why = limit_words(limited_by, _f(lower), _f(point), n) + f"; {c2}"
        return result(
            "ok",
            ExitCode.OK,
            f"B' = {target} is within the recommended range {batch_range(base, top)} ({why}): no "
            f"evidence that {rule} fails there {thm}, no guarantee that it holds",
            bound=True,
        )
    if target <= point:
        reason = (
            f"B' = {target} is above the lower 95% bound of B* ({_f(lower)}) but not above its "
            f"point estimate ({_f(point)}); {c2}: undecided, {rule} by κ = {kappa:.3g} may fail "
            f"{thm}"
        )
        if strict:
            return result("fail", ExitCode.CHECK_FAILED, reason + " (--strict)", bound=True)
        if gate == "lower":
            return result("warn", ExitCode.UNDECIDED, reason + " (gate: lower bound)", bound=True)
        return result("warn", ExitCode.OK, reason + " (gate: point estimate)", bound=True)
    return result(
        "fail",
        ExitCode.CHECK_FAILED,
        f"B' = {target} is above the critical batch size B* = {_f(point)} (lower 95% bound "
        f"{_f(lower)}; {c2}): at the estimated NSR, κ = {kappa:.3g} > κ_max and (C, κ)-linear "
        f"scaling invariance fails {thm}; {rule} is expected to fail",
        bound=True,
    )
