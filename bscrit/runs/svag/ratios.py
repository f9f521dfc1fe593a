"""SGD against its SDE, one test function at a time: the SDE's value from the SVAG runs and the
ratio SGD/SDE with a 95% interval (pure: no torch).

Steps 3 and 4 of the verdict (:mod:`bscrit.runs.svag.verdict`): the SDE from the runs l > 1,
extrapolated linearly in 1/l only when the runs show the trend ([LMA21] Thm 4.3 bounds the error
by C(T)/l; it promises no expansion in 1/l), else the largest l (:func:`sde_estimate`); the ratio
SGD/SDE with a 95% interval by the delta method on the log ratio (:func:`ratio_estimate`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.runs.common.artifact import none_to_nan
from bscrit.runs.svag.tail import TailStat
from bscrit.stats.estimators import t_quantile

__all__ = ["LEVEL", "RatioEstimate", "SdeEstimate", "diff_significant", "ratio_estimate",
           "ratio_status", "sde_estimate"]  # fmt: skip

LEVEL = 0.95  # the intervals' level


def _q(df: float) -> float:
    """Two-sided 95% quantile of t at ``df`` (∞ when df is not a positive number)."""
    return t_quantile(0.5 + LEVEL / 2, df) if math.isfinite(df) and df > 0 else math.inf


@dataclass(frozen=True)
class SdeEstimate:
    """The SDE's value of one test function, from the SVAG runs (l > 1)."""

    metric: str
    value: float
    se: float
    df: float
    source: str  # "extrapolated" | "largest_l"
    ls: tuple[int, ...]  # the SVAG l it is computed from
    trend: str  # why (not) extrapolated

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": finite_or_none(self.value),
            "se": finite_or_none(self.se),
            "df": finite_or_none(self.df),
            "source": self.source,
            "ls": list(self.ls),
            "trend": self.trend,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> SdeEstimate:
        return SdeEstimate(
            str(d["metric"]), none_to_nan(d["value"]), none_to_nan(d["se"]),
            none_to_nan(d["df"]), str(d["source"]), tuple(int(x) for x in d["ls"]),
            str(d["trend"]),
        )  # fmt: skip


def diff_significant(a: TailStat, b: TailStat, p: float = 0.5 + LEVEL / 2) -> bool:
    """|b − a| beyond the two-sided ``p`` quantile of t times its s.e. (runs independent)."""
    d, se, df = b.mean - a.mean, math.hypot(a.se, b.se), min(a.df, b.df)
    q = t_quantile(p, df) if math.isfinite(df) and df > 0 else math.inf
    return math.isfinite(se) and abs(d) > q * se


def sde_estimate(ref: TailStat, svag: Sequence[TailStat], extrapolate: str = "auto") -> SdeEstimate:
    """The SDE's tail mean of one metric: the SVAG runs extrapolated in 1/l when they show the
    trend (module docstring, step 3), else the largest l.

    Linear in 1/l through the two largest l_a < l_b: v = (l_b m_b − l_a m_a)/(l_b − l_a), with
    se² = (l_b² se_b² + l_a² se_a²)/(l_b − l_a)² (runs treated as independent).
    """
    svag = sorted(svag, key=lambda s: s.l)
    top = svag[-1]
    largest = SdeEstimate(ref.metric, top.mean, top.se, top.df, "largest_l", (top.l,), "")
    if len(svag) < 2:
        return replace(largest, trend="one SVAG run: the largest l")
    if extrapolate == "never":
        return replace(largest, trend="extrapolation off: the largest l")
    a, b = svag[-2], svag[-1]
    seq = [ref, *svag]
    steps = [y.mean - x.mean for x, y in zip(seq, seq[1:])]
    if not all(math.isfinite(s) for s in steps):
        return replace(largest, trend="not finite: the largest l")
    monotone = all(s > 0 for s in steps) or all(s < 0 for s in steps)
    if not monotone:
        return replace(largest, trend=f"not monotone in l = {', '.join(str(s.l) for s in seq)}: "
                       "the largest l")  # fmt: skip
    if not diff_significant(a, b):
        return replace(largest, trend=f"l = {a.l} and {b.l} agree within their 95% interval: "
                       "the largest l")  # fmt: skip
    if abs(steps[-1]) >= abs(steps[-2]):
        return replace(largest, trend=f"not converging (the step {a.l}→{b.l} is not smaller than "
                       "the one before): the largest l")  # fmt: skip
    la, lb = a.l, b.l
    value = (lb * b.mean - la * a.mean) / (lb - la)
    se = math.sqrt(lb**2 * b.se**2 + la**2 * a.se**2) / (lb - la)
    return SdeEstimate(
        ref.metric, value, se, min(a.df, b.df), "extrapolated", (la, lb),
        f"monotone and converging in l = {', '.join(str(s.l) for s in seq)}: extrapolated "
        f"linearly in 1/l to 0 from l = {la}, {lb}",
    )  # fmt: skip


@dataclass(frozen=True)
class RatioEstimate:
    """SGD/SDE of one test function with a 95% interval and where it lies against [1/C, C].

    ``status``: "inside" (interval within [1/C, C]), "outside" (interval wholly outside),
    "straddles" (the interval reaches across a boundary), "undefined" (a non-positive mean),
    "unresolved" (G below the noise N/k of the k fixed evaluation batches: shown only).
    """

    metric: str
    sgd: float
    sde: float
    ratio: float
    lo: float
    hi: float
    status: str
    point_inside: bool
    decides: bool
    sde_source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "sgd": finite_or_none(self.sgd),
            "sde": finite_or_none(self.sde),
            "ratio": finite_or_none(self.ratio),
            "ci95": [finite_or_none(self.lo), finite_or_none(self.hi)],
            "status": self.status,
            "point_inside": self.point_inside,
            "decides": self.decides,
            "sde_source": self.sde_source,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> RatioEstimate:
        lo, hi = d["ci95"]
        return RatioEstimate(
            str(d["metric"]), none_to_nan(d["sgd"]), none_to_nan(d["sde"]),
            none_to_nan(d["ratio"]),
            0.0 if lo is None else float(lo), math.inf if hi is None else float(hi),
            str(d["status"]), bool(d["point_inside"]), bool(d["decides"]), str(d["sde_source"]),
        )  # fmt: skip


def ratio_status(lo: float, hi: float, C: float) -> str:  # noqa: N803
    """Where the 95% interval [lo, hi] of a ratio lies against [1/C, C]: "inside", "outside"
    (wholly above C or below 1/C) or "straddles" (it reaches across a boundary)."""
    if lo >= 1.0 / C and hi <= C:
        return "inside"
    if lo > C or hi < 1.0 / C:
        return "outside"
    return "straddles"


def ratio_estimate(
    sgd: TailStat,
    sde: SdeEstimate,
    C: float,
    decide_on: Sequence[str],
) -> RatioEstimate:
    """SGD/SDE with a 95% interval by the delta method on the log ratio:
    se² = (se_sgd/sgd)² + (se_sde/sde)², t at the smaller number of degrees of freedom (runs
    treated as independent; they share seeds, so this is conservative). A non-positive mean (Ĝ
    can be) gives no interval ("undefined")."""
    decides = sgd.metric in decide_on
    if not (sgd.mean > 0 and sde.value > 0):
        return RatioEstimate(sgd.metric, sgd.mean, sde.value, math.nan, 0.0, math.inf,
                             "undefined", False, decides, sde.source)  # fmt: skip
    r = sgd.mean / sde.value
    se_log = math.hypot(sgd.se / sgd.mean, sde.se / sde.value)
    half = _q(min(sgd.df, sde.df)) * se_log if math.isfinite(se_log) else math.inf
    lo, hi = (r * math.exp(-half), r * math.exp(half)) if math.isfinite(half) else (0.0, math.inf)
    status = ratio_status(lo, hi, C)
    inside = 1.0 / C <= r <= C
    return RatioEstimate(sgd.metric, sgd.mean, sde.value, r, lo, hi, status, inside, decides,
                         sde.source)  # fmt: skip
