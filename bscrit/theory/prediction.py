"""``bscrit predict`` and ``bscrit check`` as pure functions: measurement JSON in, answers out.

No torch: everything here is a few float64 operations on the sums stored in the artifact
(docs/theory.md §4, §5, §7; [LMA21] Thms 5.2, 5.5, 5.6). The first measurement is the *base*
run: its batch size starts the recommended range and its optimizer is the one that gets scaled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none, finite_pair
from bscrit.artifacts.measurement import Measurement, load_measurement
from bscrit.checker import check_batch_size
from bscrit.errors import BscritError, ExitCode, UsageError
from bscrit.optim import registry as optim
from bscrit.theory.bounds import MeasurementBounds, measurement_bounds
from bscrit.theory.formulas import DEFAULT_C2, check_c2, nsr_at_batch
from bscrit.theory.recommendation import Recommendation, b_star_range, first_limit, recommend
from bscrit.theory.scaling import (
    ADAPTIVE_SDE_MIN_NSR,
    RuleLimit,
    ScaledHyperparameters,
    rule_limit,
    scale_hyperparameters,
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
        "thm55_base_batch_below": finite_or_none(b.thm55_base_batch_below),
        "thm55_kappa_min": finite_or_none(b.thm55_kappa_min),
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
        }


def predict(measurements: Sequence[tuple[str, Measurement]], c2: float = DEFAULT_C2) -> Prediction:
    """Bounds for each measurement, their range, the recommended range and scaled hyperparameters.

    Args:
        measurements: ``(source, measurement)`` pairs; the first is the base run.
        c2: C² of [LMA21] (> 1).
    """
    c2 = check_c2(c2)
    if not measurements:
        raise UsageError("predict needs at least one measurement")
    bounds = tuple(measurement_bounds(m, src, c2) for src, m in measurements)
    limit = _rule_limit(bounds[0])
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
                base.optimizer, base.batch_size, target, nsr_target=nsr_t
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
    )


def _rule_limit(base: MeasurementBounds) -> RuleLimit | None:
    """How far the base run's optimizer rule reaches (None: no optimizer, or invalid values)."""
    if base.optimizer is None:
        return None
    try:
        return rule_limit(base.optimizer, base.batch_size)
    except BscritError:
        return None


def _rule_words(p: Prediction) -> tuple[str, str]:
    """("linear scaling" | "the square-root rule", the Thm 5.6 reference fit for the optimizer)."""
    opt = p.base.optimizer
    if opt is not None and optim.get(opt.name).rule == "none":
        return (f"{opt.name} ({optim.get(opt.name).rule_reference})",
                "(a heuristic reading of [LMA21 Thm 5.6], proved for SGD)")  # fmt: skip
    if opt is None or not optim.get(opt.name).adaptive:
        return "linear scaling", "[LMA21 Thm 5.6]"
    return (
        f"the {optim.get(opt.name).rule_reference} for {opt.name}",
        "(a heuristic reading of [LMA21 Thm 5.6], proved for SGD)",
    )


def predict_files(paths: Sequence[str | os.PathLike[str]], c2: float = DEFAULT_C2) -> Prediction:
    """:func:`predict` on measurement JSON files (raises ArtifactError for a bad file)."""
    return predict([(str(p), load_measurement(p)) for p in paths], c2)


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------


#: ``CheckResult.limited_by``: what sets the top of the range ``check`` applies.
LIMITED_BY = ("b_star", "scaling_rule", "dataset_size")


@dataclass(frozen=True)
class CheckResult:
    """The verdict of ``bscrit check`` for a target batch size B'.

    ``limited_by`` says which limit binds the top of the range (``range_max``): ``"b_star"``, the
    lower 95% bound of B*, or ``"dataset_size"``, n, when that bound is above n (B* is beyond
    full-batch training: a batch cannot hold more distinct examples than the data).
    """

    target: int
    verdict: str  # "ok" | "warn" (exit 0) | "fail" (exit 1)
    exit_code: ExitCode
    reason: str  # the one line that says why
    strict: bool
    prediction: Prediction
    limited_by: str = "b_star"  # one of LIMITED_BY
    range_max: float = math.inf  # min(lower 95% bound of B*, the rule's reach, n)

    def to_dict(self) -> dict[str, Any]:
        p = self.prediction
        r = p.recommended
        return {
            "batch_size": self.target,
            "verdict": self.verdict,
            "exit_code": int(self.exit_code),
            "reason": self.reason,
            "strict": self.strict,
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


def check(prediction: Prediction, target: int, strict: bool = False) -> CheckResult:
    """Is B' = ``target`` within the recommended range?

    - B' > n, the dataset size: fail (exit 1): a batch cannot hold more distinct examples than
      the data.
    - B' ≤ the base B (scaling down or staying) or B' ≤ the top of the range, min(lower 95%
      bound of B*, n): ok (exit 0); the reason says which of the two limits binds.
    - lower bound < B' ≤ point estimate of B*: ok with a warning (exit 0), fail with ``strict``.
    - B' > point estimate of B* (the smallest across baselines): fail (exit 1) [LMA21 Thm 5.6].
    """
    check_batch_size(target, "batch_size")
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

    def result(verdict: str, code: ExitCode, reason: str) -> CheckResult:
        return CheckResult(target, verdict, code, reason, strict, p, limited_by, top)

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
            f"{p.rule_limit.reason} (κ = {kappa:.3g}); no scaled hyperparameters exist there",
        )
    if target <= top:
        if limited_by == "scaling_rule":
            why = (
                f"the end of the scaling rule's reach; the lower 95% bound of B* = {_f(lower)}, "
                f"point estimate {_f(point)}; {c2}"
            )
        elif limited_by == "dataset_size":
            why = (
                f"capped at the dataset size n = {n}; the lower 95% bound of B* = {_f(lower)} is "
                f"above it, point estimate {_f(point)}; {c2}"
            )
        else:
            why = f"lower 95% bound of B* = {_f(lower)}, point estimate {_f(point)}; {c2}"
        return result(
            "ok",
            ExitCode.OK,
            f"B' = {target} is within the recommended range [{base}, {_f(top)}] ({why})",
        )
    if target <= point:
        reason = (
            f"B' = {target} is above the lower 95% bound of B* ({_f(lower)}) but not above its "
            f"point estimate ({_f(point)}); {c2}: {rule} by κ = {kappa:.3g} may fail {thm}"
        )
        if strict:
            return result("fail", ExitCode.CHECK_FAILED, reason + " (--strict)")
        return result("warn", ExitCode.OK, reason)
    return result(
        "fail",
        ExitCode.CHECK_FAILED,
        f"B' = {target} is above the critical batch size B* = {_f(point)} (lower 95% bound "
        f"{_f(lower)}; {c2}): {rule} by κ = {kappa:.3g} > κ_max is predicted to fail {thm}",
    )


def range_context(
    source: str, m: Measurement, batch_size: int, target: int, c2: float = DEFAULT_C2
) -> tuple[list[str], float | None]:
    """What ``scale --measurement`` adds: warnings about B' and the NSR at B'.

    Returns:
        ``(warnings, nsr_target)``: a warning when B' is beyond the measurement's recommended range
        (the reason :func:`check` gives) or when the measurement's B differs from the base B; and
        NSR^{B'} (docs/theory.md §1) for the adaptive-SDE warning of the square-root rule.
    """
    pred = predict([(source, m)], c2)
    warnings: list[str] = []
    if m.batch_size != batch_size:
        warnings.append(
            f"{source} was measured at B = {m.batch_size}, not the base B = {batch_size}: its "
            "range is about a run at that batch size"
        )
    verdict = check(pred, target)
    if verdict.verdict != "ok":
        warnings.append(f"beyond the recommended range of {source}: {verdict.reason}")
    pb = pred.base
    return warnings, nsr_at_batch(pb.nsr, pb.batch_size, target, pb.dataset_size)


def confirmation_target(prediction: Prediction, *, power_of_two: bool = False) -> tuple[int, str]:
    """The batch size B' at which to confirm a prediction (``svag --from-measurement``, the demo).

    The top of the recommended range
    (:attr:`~bscrit.theory.recommendation.Recommendation.target`), capped at
    n/2: a SVAG step draws two batches, which above n/2 overlap heavily and carry little noise.
    ``power_of_two`` takes the largest power of two at or below that.

    Returns:
        ``(B', why)``: ``why`` says which limit gave B' in plain words.

    Raises:
        UsageError: the range is empty or has no finite top (nothing to confirm there).
    """
    r = prediction.recommended
    if r.empty:
        raise UsageError(
            f"{r.note}; nothing to confirm (give {{target_batch_size}})",
            target_batch_size="target_batch_size",
        )
    if r.target is None:
        raise UsageError(
            f"{r.note}; give {{target_batch_size}}", target_batch_size="target_batch_size"
        )
    n = prediction.base.dataset_size
    target, why = r.target, "the top of the recommended range"
    if target > n // 2:
        target, why = (
            n // 2,
            f"n/2 = {n // 2} (the top of the recommended range, {r.target}, is above it)",
        )
    if power_of_two:
        pow2 = 1 << (target.bit_length() - 1)
        if pow2 != target:
            target, why = pow2, f"the largest power of two within {why}"
    return target, why
