"""The verdict of ``bscrit confirm``: does B' reach the loss of B? (pure: no torch)

The protocol (docs/confirm.md; Merrill et al. 2025, "Critical Batch Size Revisited", branched
training): from one checkpoint, a *base* branch trains at the run's batch size B with its
hyperparameters and a *target* branch at B' = κB with the hyperparameters scaled by the
optimizer's rule, for the same number of examples E, once per seed (the seed sets the batch order
and dropout; the same seeds for both branches). Both are evaluated on a shared grid of example
counts. The scaling rule *holds* from B to B' when the target reaches the loss of the base.

The verdict. Let L_B(s), L_B'(s) be the final losses of seed s (mean over the last
``tail_points`` grid points; held-out loss when the spec has ``eval_data``, else the loss on the
fixed training batches). Per seed

    d_s = (L_B'(s) − L_B(s)) / L_B(s)    (relative, ``--tolerance``; the default), or
    d_s = L_B'(s) − L_B(s)               (absolute, in the loss's units, ``--tolerance-abs``),

and over the K seeds (paired: the same seed in both branches) the mean d̄ with the 95% Student-t
interval d̄ ± t_{0.975, K−1} · sd(d)/√K. With the tolerance δ fixed before the run:

- ``holds``: the whole interval lies below δ (B' loses less than δ of the loss, at 95%);
- ``fails``: the whole interval lies above δ, or a target branch diverged (a NaN/Inf loss, or a
  loss above ``DIVERGENCE_FACTOR`` = 10 times its value at the checkpoint);
- ``inconclusive``: otherwise, and always with one seed (no interval) unless a branch diverged.

A base branch that diverges is a run failure (:class:`~bscrit.errors.RunError`, exit 3), raised by
:mod:`bscrit.runs.confirm.run`, not a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.boundary import number_problem, short
from bscrit.errors import UsageError
from bscrit.runs.common.artifact import none_to_nan
from bscrit.runs.common.result import METRIC_LABELS
from bscrit.stats.estimators import LEVEL, t_quantile

__all__ = ["ABSOLUTE", "DEFAULT_TOLERANCE", "RELATIVE", "TOLERANCE_UNIT",
           "TOLERANCE_UNIT_ABSOLUTE", "ConfirmVerdict", "absolute_difference", "check_tolerance",
           "criterion", "decide", "describe_tolerance", "difference", "format_difference",
           "relative_difference", "t_interval", "tolerance_and_unit", "unit_label",
           "unit_of"]  # fmt: skip

#: Default tolerance δ on the relative final-loss difference (L_B' − L_B)/L_B, chosen on
#: mnist1d-si (docs/validation.md, "Agreement"): with the LR decay at the end of both branches
#: and 2 relaxation times, every δ in (7.1%, 14.5%) agrees with the LSR sweep on all 7 batch
#: sizes there (δ = 5% leaves B' = 512 inconclusive); 10% then agrees on all 7 of mnist1d-affine.
DEFAULT_TOLERANCE = 0.10
#: The unit of δ, said wherever it is printed or written (``tolerance_unit`` in the JSON).
TOLERANCE_UNIT = "relative: a fraction of the base run's final loss L_B, on d = (L_B' − L_B)/L_B"
#: The unit of an absolute δ (``--tolerance-abs``) in the JSON: δ in the loss's own units (nats
#: for a cross-entropy), on d = L_B' − L_B.
TOLERANCE_UNIT_ABSOLUTE = "absolute"
#: The two units of δ (``ConfirmVerdict.unit``).
RELATIVE, ABSOLUTE = "relative", "absolute"
#: The final loss is the mean over this many last grid points (of ``DEFAULT_POINTS`` + 1): the
#: last fifth, which averages out the loss's fluctuation at a constant LR (on digits at B' = 256,
#: 3 points left the 95% interval of d twice as wide as 5). With ``--decay``: the last point.
DEFAULT_TAIL_POINTS = 5
DECAY_TAIL_POINTS = 1
#: A branch has diverged when a loss is not finite or above this many times its value at the
#: checkpoint (grid point 0): a run blowing up need not overflow within the budget.
DIVERGENCE_FACTOR = 10.0

VERDICTS = ("holds", "fails", "inconclusive")
#: Metrics the verdict can use, in order of preference.
LOSS_METRICS = ("eval_loss", "train_loss")


def relative_difference(base: float, target: float) -> float:
    """d = (L_B' − L_B)/L_B; +inf when the target is not finite; for L_B = 0, 0 if L_B' = 0
    else ±inf."""
    if not math.isfinite(target):
        return math.inf
    if base == 0:
        return 0.0 if target == 0 else math.copysign(math.inf, target)
    return (target - base) / abs(base)


def absolute_difference(base: float, target: float) -> float:
    """d = L_B' − L_B (in the loss's units); +inf when the target is not finite."""
    if not math.isfinite(target):
        return math.inf
    return target - base


def difference(base: float, target: float, unit: str = RELATIVE) -> float:
    """d of one seed in ``unit``: (L_B' − L_B)/L_B (relative) or L_B' − L_B (absolute)."""
    if unit == ABSOLUTE:
        return absolute_difference(base, target)
    return relative_difference(base, target)


def unit_label(unit: str) -> str:
    """What ``tolerance_unit`` says in the JSON: :data:`TOLERANCE_UNIT` (relative, as before
    absolute δ existed) or ``"absolute"``."""
    return TOLERANCE_UNIT_ABSOLUTE if unit == ABSOLUTE else TOLERANCE_UNIT


def unit_of(label: Any) -> str:
    """The unit (:data:`RELATIVE` or :data:`ABSOLUTE`) of a JSON ``tolerance_unit``: missing (files
    written before absolute δ existed) or ``"relative..."`` → relative; ``"absolute..."`` →
    absolute; anything else a :class:`ValueError`."""
    if label is None:
        return RELATIVE
    text = str(label)
    for unit in (RELATIVE, ABSOLUTE):
        if text.startswith(unit):
            return unit
    raise ValueError(f"tolerance_unit must say 'relative' or 'absolute', got {short(label)}")


def format_difference(x: float, unit: str = RELATIVE) -> str:
    """d as printed: ``+1.23%`` (relative) or ``+0.0123`` (absolute, the loss's units)."""
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("+∞" if x > 0 else "−∞")
    return f"{x:+.4g}" if unit == ABSOLUTE else f"{100 * x:+.2f}%"


def t_interval(
    values: Sequence[float], level: float = LEVEL
) -> tuple[float, float, tuple[float, float] | None]:
    """``(mean, sd, interval)``: mean ± t_{(1+level)/2, K−1}·sd/√K over K values (sd with K − 1);
    no interval (None) for K < 2 or a non-finite value."""
    k = len(values)
    if k == 0:
        return math.nan, math.nan, None
    mean = math.fsum(values) / k
    if k < 2 or not all(math.isfinite(v) for v in values):
        return mean, math.nan, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (k - 1))
    half = t_quantile(0.5 + level / 2.0, k - 1) * sd / math.sqrt(k)
    return mean, sd, (mean - half, mean + half)


def describe_tolerance(tolerance: float, unit: str = RELATIVE) -> str:
    """δ with its unit in words: ``"δ = 10% of the base run's loss (relative)"`` or
    ``"δ = 0.01 (absolute, in the loss's units, e.g. nats)"``."""
    if unit == ABSOLUTE:
        return f"δ = {tolerance:g} (absolute, in the loss's units, e.g. nats)"
    return f"δ = {100 * tolerance:g}% of the base run's loss (relative)"


def criterion(tolerance: float, metric: str, tail_points: int, unit: str = RELATIVE) -> str:
    """The criterion in words (what ``--json`` reports as ``criterion``)."""
    label = METRIC_LABELS.get(metric, metric)
    if unit == ABSOLUTE:
        d, delta = "d = L_B' − L_B", f"δ = {tolerance:g} (absolute, in the loss's units)"
    else:
        d, delta = "d = (L_B' − L_B)/L_B", f"δ = {tolerance:g} (relative, a fraction of L_B)"
    return (
        f"{d} per seed, L = {label} averaged over the last {tail_points} grid "
        f"points; 95% t-interval of the mean of d over the seeds; holds if the whole interval "
        f"< {delta}, fails if the whole interval > δ or "
        "a B' branch diverged, else "
        "inconclusive"
    )


@dataclass(frozen=True)
class ConfirmVerdict:
    """``code`` in {holds, fails, inconclusive}, in words, with the numbers behind it."""

    code: str
    text: str
    metric: str  # the loss that decided: "eval_loss" or "train_loss"
    per_seed: tuple[float, ...]  # d_s
    mean: float
    sd: float
    ci95: tuple[float, float] | None
    tolerance: float
    diverged: tuple[str, ...] = ()  # "seed 1 at 12800 examples" of the target branches
    unit: str = RELATIVE  # of d and δ: "relative" ((L_B' − L_B)/L_B) or "absolute" (L_B' − L_B)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "text": self.text,
            "metric": self.metric,
            "per_seed": [finite_or_none(x) for x in self.per_seed],
            "mean": finite_or_none(self.mean),
            "sd": finite_or_none(self.sd),
            "ci95": None if self.ci95 is None else [finite_or_none(x) for x in self.ci95],
            "tolerance": self.tolerance,
            "tolerance_unit": unit_label(self.unit),
            "diverged": list(self.diverged),
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ConfirmVerdict:
        ci = d.get("ci95")
        return ConfirmVerdict(
            code=str(d["code"]),
            text=str(d["text"]),
            metric=str(d["metric"]),
            per_seed=tuple(none_to_nan(x) if x is not None else math.inf for x in d["per_seed"]),
            mean=none_to_nan(d.get("mean")),
            sd=none_to_nan(d.get("sd")),
            ci95=None if ci is None else (none_to_nan(ci[0]), none_to_nan(ci[1])),
            tolerance=float(d["tolerance"]),
            diverged=tuple(str(x) for x in d.get("diverged", [])),
            unit=unit_of(d.get("tolerance_unit")),
        )


def check_tolerance(tolerance: float, option: str = "tolerance") -> float:
    """δ must be a finite number > 0 (a :class:`UsageError` naming ``--tolerance``, or the
    ``option`` given, e.g. ``tolerance_abs``, otherwise)."""
    x, why = number_problem(tolerance, low=0.0, low_open=True)
    if why or x is None:
        raise UsageError(f"{{tolerance}} must be > 0, got {short(tolerance)}", tolerance=option)
    return x


def tolerance_and_unit(
    tolerance: float | None = None, tolerance_abs: float | None = None
) -> tuple[float, str]:
    """``(δ, unit)`` from the two options: ``tolerance_abs`` → absolute, else ``tolerance`` (default
    :data:`~bscrit.runs.confirm.verdict.DEFAULT_TOLERANCE`) relative; both given, or a δ that is
    not a finite number > 0, is a :class:`UsageError` naming the option."""
    if tolerance is not None and tolerance_abs is not None:
        raise UsageError(
            "give {tolerance} (relative) or {tolerance_abs} (absolute), not both",
            tolerance="tolerance", tolerance_abs="tolerance_abs",
        )  # fmt: skip
    if tolerance_abs is not None:
        return check_tolerance(tolerance_abs, "tolerance_abs"), ABSOLUTE
    return check_tolerance(DEFAULT_TOLERANCE if tolerance is None else tolerance), RELATIVE


def decide(
    per_seed: Sequence[float],
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    metric: str = "eval_loss",
    diverged: Sequence[str] = (),
    target_batch_size: int | None = None,
    unit: str = RELATIVE,
) -> ConfirmVerdict:
    """The verdict from the per-seed differences d_s (module docstring).

    Args:
        per_seed: d_s of each seed in ``unit`` (+inf for a diverged target branch).
        tolerance: δ, fixed before the run, in ``unit``.
        unit: :data:`RELATIVE` (d = (L_B' − L_B)/L_B, the default) or :data:`ABSOLUTE`
            (d = L_B' − L_B, in the loss's units).
        metric: the loss the d_s are of (reported).
        diverged: where target branches diverged ("seed 1 at 12800 examples"); any → fails.
        target_batch_size: B', for the text.
    """
    if unit not in (RELATIVE, ABSOLUTE):
        raise ValueError(f"unit must be {RELATIVE!r} or {ABSOLUTE!r}, got {unit!r}")
    check_tolerance(tolerance, "tolerance_abs" if unit == ABSOLUTE else "tolerance")
    b = f"B' = {target_batch_size}" if target_batch_size is not None else "B'"
    mean, sd, ci = t_interval(per_seed)

    def fmt(x: float) -> str:
        return format_difference(x, unit)

    common = dict(metric=metric, per_seed=tuple(per_seed), mean=mean, sd=sd, ci95=ci,
                  tolerance=tolerance, diverged=tuple(diverged), unit=unit)  # fmt: skip
    if diverged:
        text = f"the {b} branch diverged ({'; '.join(diverged)}): the scaling rule fails there."
        return ConfirmVerdict("fails", text, **common)  # type: ignore[arg-type]
    if ci is None:
        text = f"one seed gives no interval (d = {fmt(mean)}); run --seeds 2 or more for a verdict."
        return ConfirmVerdict("inconclusive", text, **common)  # type: ignore[arg-type]
    span = f"d = {fmt(mean)} (95%: {fmt(ci[0])} to {fmt(ci[1])})"
    delta = describe_tolerance(tolerance, unit)
    if ci[1] < tolerance:
        code = "holds"
        text = (f"{span} lies below {delta}: at {b} the scaled run ends less than δ above "
                "the base run's loss for the same examples (one-sided, at 95%); the scaling "
                "rule holds by this criterion.")  # fmt: skip
    elif ci[0] > tolerance:
        code = "fails"
        text = (f"{span} lies above {delta}: at {b} the scaled run ends with a higher "
                "loss for the same examples; the scaling rule fails.")  # fmt: skip
    else:
        code = "inconclusive"
        text = (f"{span} contains {delta}: more seeds or more examples would "
                "settle it.")  # fmt: skip
    return ConfirmVerdict(code, text, **common)  # type: ignore[arg-type]
