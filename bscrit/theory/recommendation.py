"""Across measurements: the range of B* and the recommended batch sizes (pure: no torch).

The recommended range runs from the base run's B to the first of three limits
(:data:`LIMITED_BY`): the smallest lower 95% bound of B* over the baselines
(:mod:`bscrit.theory.bounds`), the largest B' the optimizer's scaling rule reaches
(:func:`bscrit.theory.scaling.rule_limit`), and the dataset size n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.theory.bounds import MeasurementBounds
from bscrit.theory.formulas import largest_multiple, largest_power_of_two
from bscrit.theory.scaling import RuleLimit


def b_star_range(bounds: Sequence[MeasurementBounds]) -> tuple[float, float]:
    """(min, max) of the B* point estimates across baselines, as in [LMA21] Fig. 3."""
    if not bounds:
        raise ValueError("no measurements")
    values = [b.b_star for b in bounds]
    return min(values), max(values)


def _batch_end(x: float, up: bool) -> str:
    """One end of a batch-size range: whole, or 4 significant digits below 1000, rounded
    inward (``up`` for the low end) so that every integer in the printed range is in the range."""
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if float(x).is_integer():
        return f"{x:.0f}"
    decimals = max(0, 3 - math.floor(math.log10(abs(x))))
    scaled = x * 10**decimals
    near = round(scaled)  # 0.3 × 10⁴ is 2999.9999999999995 in binary: not rounded down
    scaled = near if abs(scaled - near) <= 1e-9 * abs(scaled) else scaled
    v = (math.ceil if up else math.floor)(scaled) / 10**decimals
    return f"{v:.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{v:.0f}"


def batch_range(low: float, high: float) -> str:
    """A range of batch sizes, ``[32, 992.7]`` (``[32, ∞)`` when unbounded): the one format of
    ``predict``'s recommended range and ``check``'s reasons (:func:`bscrit.report.format`'s
    ``fmt_batch_range``). The ends are rounded inward: B' = 993 is not shown inside
    ``[32, 992.7]``."""
    close = ")" if math.isinf(high) else "]"
    return f"[{_batch_end(low, up=True)}, {_batch_end(high, up=False)}{close}"


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


def _what_narrows(bounds: Sequence[MeasurementBounds]) -> str:
    """What would narrow B*'s interval, by what the intervals cover (the warnings say more)."""
    if all(b.interval_scope == "equilibrium" for b in bounds):
        return (
            "measure more draws from the equilibrium to narrow it (checkpoints ≥ 1/(2ηλ) apart, "
            "or a longer --sample-steps)"
        )
    return (
        "measure more batches to narrow the batch noise, and more draws (checkpoints ≥ 1/(2ηλ) "
        "apart, or --sample-steps) for the equilibrium"
    )


def limit_words(limited_by: str, lower: str, point: str, n: int) -> str:
    """Which limit ends the range ``check`` applies, with B*'s lower bound and point estimate
    (both already formatted)."""
    if limited_by == "scaling_rule":
        return (f"the end of the scaling rule's reach; the lower 95% bound of B* = {lower}, "
                f"point estimate {point}")  # fmt: skip
    if limited_by == "dataset_size":
        return (f"capped at the dataset size n = {n}; the lower 95% bound of B* = {lower} is "
                f"above it, point estimate {point}")  # fmt: skip
    return f"lower 95% bound of B* = {lower}, point estimate {point}"


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
       guarantee; a heuristic reading for adaptive optimizers and momentum SGD).
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
            "no upper limit detected at this precision (Ĝ's interval is entirely ≤ 0): "
            f"{_what_narrows(bounds)} before scaling up",
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
        "b_star": f"the lower 95% bound of B* ({_batch_end(top, up=False)})",
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
            f"this precision and its lower bound is all that is known ({_what_narrows(bounds)})"
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
